# Homebrew formula for Coral (packaging/homebrew/coral.rb).
#
# Linux: the coral CLI, colony and agent, plus coral-privhelper and its
# systemd units under the keg (the helper must run as root from systemd;
# the caveats say the three commands). macOS: the CLI alone, `coral` built
# without its `daemons` feature ('coral ask', 'coral mcp', and the commands
# that talk to a colony's sockets, forwarded from a Linux host with ssh):
# the colony, the agent and the helper are Linux-only (TUN, eBPF, landlock,
# seccomp). packaging/dev/cli-only.sh checks that build on Linux (make test).
# packaging/homebrew/dev.coral.privhelper.plist is the launchd job for the
# helper once it runs on macOS.
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

  on_linux do
    depends_on "llvm" => :build # clang -target bpf compiles ebpf/bpf/*.bpf.c
    depends_on "libbpf" => :build
  end

  def install
    unless OS.linux?
      # The CLI alone: no daemons, no DuckDB (see the header).
      system "cargo", "install", *std_cargo_args(path: "coral"), "--no-default-features"
      return
    end

    system "cargo", "install", *std_cargo_args(path: "coral")

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
        On macOS coral is the CLI alone: 'coral ask', 'coral mcp', and the
        commands that talk to a colony. The colony, the agent and
        coral-privhelper are Linux-only (TUN, eBPF, landlock, seccomp): run them
        on the Linux hosts and forward the colony's sockets, for example
          ssh -N -L $XDG_RUNTIME_DIR/coral/colony.sock:/run/user/1000/coral/colony.sock \
                 -L $XDG_RUNTIME_DIR/coral/colony-mcp.sock:/run/user/1000/coral/colony-mcp.sock HOST
        ('brew services' runs the colony, so it applies on Linux only.)
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
    if OS.linux?
      # Without the helper installed, doctor fails (exit 1) and says how to fix it.
      output = shell_output("#{bin}/coral doctor --json", 1)
      assert_match "\"checks\"", output
      assert_match "helper socket", output
    else
      # The CLI alone refuses daemon commands in one line (exit 64).
      assert_match "CLI alone", shell_output("#{bin}/coral colony start 2>&1", 64)
    end
  end
end
