# Evaluates packaging/homebrew/coral.rb against a small stand-in for
# Homebrew's Formula DSL (Homebrew itself is not installable here): the class
# loads, the required fields are set, `service` and `test do` exist, and
# `install` (run for Linux and for macOS) installs only files that exist in
# the tree and rewrites the unit's helper path.
#   ruby packaging/test/brew_loader.rb packaging/homebrew/coral.rb REPO_ROOT
require "pathname"

FORMULA, TREE = ARGV
abort "usage: brew_loader.rb FORMULA TREE" unless FORMULA && TREE

module OS
  class << self
    attr_accessor :kind
    def linux? = kind == :linux
    def mac? = kind == :macos
  end
end

class ServiceSpec
  attr_reader :fields
  def initialize = @fields = {}
  %i[run keep_alive log_path error_log_path working_dir require_root environment_variables].each do |m|
    define_method(m) { |v| @fields[m] = v }
  end
end

class Formula
  class << self
    attr_reader :fields, :deps, :service_block, :test_block
    def inherited(sub)
      super
      sub.instance_variable_set(:@fields, {})
      sub.instance_variable_set(:@deps, [])
    end
    %i[desc homepage license url sha256 version].each do |m|
      define_method(m) { |v| @fields[m] = v }
    end
    def head(url, **opts) = @fields[:head] = [url, opts]
    def depends_on(dep) = @deps << [OS.kind, dep]
    def on_linux(&blk) = (blk.call if OS.linux?)
    def on_macos(&blk) = (blk.call if OS.mac?)
    def service(&blk) = @service_block = blk
    def test(&blk) = @test_block = blk
  end

  attr_reader :calls
  def initialize(prefix) = (@prefix = Pathname(prefix); @calls = [])
  def bin = @prefix / "bin"
  def lib = @prefix / "lib"
  def libexec = @prefix / "libexec"
  def pkgshare = @prefix / "share/coral"
  def var = Pathname("/usr/local/var")
  def opt_bin = bin
  def opt_lib = lib
  def opt_libexec = libexec
  def std_cargo_args(path:) = ["--locked", "--root", @prefix.to_s, "--path", path]
  def system(*args) = @calls << [:system, args]
  def inreplace(file, from, to) = @calls << [:inreplace, file.to_s, from, to.to_s]
end

class Pathname
  # `(dir).install "a", "b" => "c"`: record what would be installed.
  def install(*srcs)
    $installed ||= []
    srcs.each do |s|
      (s.is_a?(Hash) ? s.keys : [s]).each { |f| $installed << f.to_s }
    end
  end
end

load FORMULA
klass = Formula.subclasses.find { |c| c.name == "Coral" } or abort "no class Coral < Formula"
errors = []
%i[desc homepage license].each { |f| errors << "missing #{f}" unless klass.fields[f] }
errors << "no head or url" unless klass.fields[:head] || klass.fields[:url]
errors << "no service block" unless klass.service_block
errors << "no test block" unless klass.test_block
f = klass.new("/prefix")
spec_ctx = Class.new(ServiceSpec) do
  def initialize(f) = (super(); @f = f)
  def method_missing(m, *a) = @f.respond_to?(m) ? @f.public_send(m, *a) : super
  def respond_to_missing?(m, p = false) = @f.respond_to?(m) || super
end.new(f)
spec_ctx.instance_eval(&klass.service_block)
run = spec_ctx.fields[:run]
errors << "service has no run" unless run.is_a?(Array) && run.first.to_s.end_with?("/coral")
errors << "service must not run as root" if spec_ctx.fields[:require_root]

{ linux: true, macos: false }.each do |kind, helper|
  OS.kind = kind
  $installed = []
  f = klass.new("/prefix")
  f.install
  cargo = f.calls.select { |c| c[0] == :system && c[1][0] == "cargo" }
  errors << "#{kind}: no cargo install of coral" unless cargo.any? { |c| c[1].include?("coral") && c[1].include?("install") }
  cli_alone = cargo.any? { |c| c[1].include?("install") && c[1].include?("--no-default-features") }
  errors << "#{kind}: CLI-only build=#{cli_alone}, want #{!helper}" unless cli_alone == !helper
  built_helper = cargo.any? { |c| c[1].include?("coral-privhelper") }
  errors << "#{kind}: helper built=#{built_helper}, want #{helper}" unless built_helper == helper
  $installed.each do |p|
    next if p.start_with?("target/")
    errors << "#{kind}: installs #{p}, which is not in the tree" unless File.exist?(File.join(TREE, p))
  end
  if helper
    rw = f.calls.find { |c| c[0] == :inreplace }
    errors << "linux: the unit's ExecStart is not rewritten to the keg" unless rw && rw[2] == "/usr/libexec/coral/coral-privhelper" &&
      File.read(File.join(TREE, "packaging/linux/systemd/coral-privhelper.service")).include?("ExecStart=#{rw[2]}")
  end
  caveats = f.caveats
  errors << "#{kind}: caveats do not say what installs" unless caveats.include?(helper ? "usermod -aG coral" : "the CLI alone")
end

abort "brew_loader: #{errors.join('; ')}" unless errors.empty?
puts "brew_loader: Coral formula ok (#{klass.deps.size} dependencies, service #{run.map(&:to_s).join(' ')})"
