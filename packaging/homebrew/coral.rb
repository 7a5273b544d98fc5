# Homebrew formula for Coral (packaging/homebrew/coral.rb).
#
# Linux: the coral CLI, colony and agent, plus coral-privhelper and its
# systemd units under the keg (the helper must run as root from systemd;
# the caveats say the three commands). macOS: not installable yet. The
# colony, the agent and the helper are Linux-only (TUN, eBPF, landlock,
# seccomp), and the `coral` crate still builds them into the one binary, so
# a CLI-only build ('coral ask', 'coral mcp', commands against a remote
# colony) needs those dependencies gated first; until then the formula
# says `depends_on :linux`. packaging/homebrew/dev.coral.privhelper.plist is
# the launchd job for the helper once it runs on macOS.
#
# There is no published release tarball yet: install from the tree with
# 'brew install --HEAD ./packaging/homebrew/coral.rb' after pointing `head`
# at the repository. make package-test checks this file with ruby -c and a
# loader that evaluates the DSL (packaging/test/brew_loader.rb).
class Coral < Formula
  desc "LLM-orchestrated debugging for distributed apps: eBPF, OTLP, live uprobes"
  homepage "https://coral.invalid/"
  license "Apache-2.0"
  head "https://coral.invalid/coral.git", branch: "main"

  depends_on "rust" => :build
  depends_on :linux # see the header: the macOS CLI-only build is not there yet

  on_linux do
    depends_on "llvm" => :build # clang -target bpf compiles ebpf/bpf/*.bpf.c
    depends_on "libbpf" => :build
  end

  def install
    system "cargo", "install", *std_cargo_args(path: "coral")
    return unless OS.linux?

    system "cargo", "build", "--release", "--locked", "-p", "coral-privhelper"
    libexec.install "target/release/coral-privhelper"
    (lib/"systemd/system").install "packaging/linux/systemd/coral-privhelper.socket",
                                   "packaging/linux/systemd/coral-privhelper.service"
    inreplace lib/"systemd/system/coral-privhelper.service",
              "/usr/libexec/coral/coral-privhelper", opt_libexec/"coral-privhelper"
    (lib/"systemd/user").install "packaging/linux/systemd/user/coral-colony.service",
                                 "packaging/linux/systemd/user/coral-agent.service"
    (lib/"sysusers.d").install "packaging/linux/sysusers-coral.conf" => "coral.conf"
    pkgshare.install "packaging/homebrew/dev.coral.privhelper.plist"
  end

  def caveats
    if OS.linux?
      <<~EOS
        coral-privhelper (TUN devices, the WireGuard key, BPF) runs as root from systemd.
        Install its units once, then join group coral and log in again:
          sudo systemd-sysusers #{opt_lib}/sysusers.d/coral.conf
          sudo cp #{opt_lib}/systemd/system/coral-privhelper.* /etc/systemd/system/
          sudo systemctl enable --now coral-privhelper.socket
          sudo usermod -aG coral $USER
        'coral doctor' checks every step. The .deb and .rpm packages do all of this.
      EOS
    else
      <<~EOS
        Coral is Linux-only today: the colony, the agent and coral-privhelper
        need TUN, eBPF, landlock and seccomp, and the macOS CLI-only build
        ('coral ask', 'coral mcp' against a remote colony) is not there yet.
      EOS
    end
  end

  # The colony as the user's own service (never root: the helper is the only
  # root code). 'brew services start coral'.
  service do
    run [opt_bin/"coral", "colony", "start"]
    keep_alive true
    log_path var/"log/coral-colony.log"
    error_log_path var/"log/coral-colony.log"
  end

  test do
    assert_match "coral", shell_output("#{bin}/coral --version")
    # Without the helper installed, doctor fails (exit 1) and says how to fix it.
    output = shell_output("#{bin}/coral doctor --json", 1)
    assert_match "\"checks\"", output
    assert_match "helper socket", output
  end
end
