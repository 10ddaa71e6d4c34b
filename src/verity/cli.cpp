// Feature "verity": udm verity-format / verity-verify / verity-dump /
// verity-table, with veritysetup's options and output (docs/verity.md), and
// the daemon's --verity-certs / --require-signatures options.
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <thread>

#include "cli/cli_common.h"
#include "device/target_args.h"
#include "io/resolver.h"
#include "verity/format.h"
#include "verity/signature.h"

namespace udm {

namespace {

using namespace udm::verity;

// Options shared by the verbs (veritysetup's names).
struct Opts {
  std::string data, hash, root, root_hash_file;
  std::string alg = "sha256";
  uint32_t format = 1;
  std::string dbs = "4096", hbs = "4096";
  uint64_t data_blocks = 0;
  std::string hash_offset = "0";
  std::string salt, uuid;
  bool no_superblock = false;
  unsigned threads = 0;
  std::string signature;
  std::vector<std::string> certs;
  // verity-table
  bool ignore_corruption = false, restart_on_corruption = false, panic_on_corruption = false;
  bool restart_on_error = false, panic_on_error = false, ignore_zero_blocks = false, check_at_most_once = false;
  std::string sig_key_desc, sig_file;
};

void add_params(CLI::App* c, Opts& o, bool with_layout = true) {
  c->add_option("--hash", o.alg, "hash algorithm (default sha256)");
  c->add_option("--format", o.format, "hash type: 1 normal (default), 0 Chrome OS")->check(CLI::Range(0, 1));
  c->add_option("--data-block-size", o.dbs, "data block size in bytes (default 4096)");
  c->add_option("--hash-block-size", o.hbs, "hash block size in bytes (default 4096)");
  c->add_option("--data-blocks", o.data_blocks, "number of data blocks covered (default: all whole blocks)");
  c->add_option("--salt", o.salt, "salt as hex, '-' for none (format: default 32 random bytes)");
  if (with_layout) {
    c->add_option("--hash-offset", o.hash_offset, "byte offset of the superblock/tree in the hash device");
    c->add_flag("--no-superblock", o.no_superblock, "no superblock: every parameter is given on the command line");
  }
}

Result<uint32_t> block_size(const std::string& s, const char* what) {
  UDM_ASSIGN_OR_RETURN(uint64_t v, parse_size(s, what));
  if (!is_block_size_ok(v)) return Invalid(fmt::format("{}: {} is not a power of two from 512 to 524288", what, v));
  return static_cast<uint32_t>(v);
}

Result<std::vector<uint8_t>> parse_salt(const std::string& s) {
  if (s == "-") return std::vector<uint8_t>{};
  UDM_ASSIGN_OR_RETURN(auto b, from_hex(s, "--salt"));
  if (b.size() > kMaxSalt) return Invalid(fmt::format("--salt: {} bytes, at most {}", b.size(), kMaxSalt));
  return b;
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  if (stat(a.c_str(), &sa) != 0 || stat(b.c_str(), &sb) != 0) return a == b;
  if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode)) return sa.st_rdev == sb.st_rdev;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void print_header(const std::string& hash, const Params& p, const Geometry& g, const std::array<uint8_t, 16>* uuid,
                  const std::vector<uint8_t>* root, uint64_t hash_dev_size, uint64_t hash_offset) {
  std::cout << "VERITY header information for " << hash << "\n";
  std::cout << "UUID:            \t" << (uuid ? format_uuid(*uuid) : std::string()) << "\n";
  std::cout << "Hash type:       \t" << p.hash_type << "\n"
            << "Data blocks:     \t" << p.data_blocks << "\n"
            << "Data block size: \t" << p.data_block_size << "\n"
            << "Hash blocks:     \t" << g.tree_blocks << "\n"
            << "Hash block size: \t" << p.hash_block_size << "\n"
            << "Hash algorithm:  \t" << p.algorithm << "\n"
            << "Salt:            \t" << (p.salt.empty() ? std::string("-") : to_hex(p.salt)) << "\n";
  if (root) std::cout << "Root hash:      \t" << to_hex(*root) << "\n";
  // veritysetup prints the size only for a hash area at offset 0.
  if (hash_offset == 0) std::cout << "Hash device size: \t" << hash_dev_size << " [bytes]\n";
}

// Parameters for verify/table/dump: from the superblock (unless
// --no-superblock), command-line values must then agree with it.
struct Resolved {
  Params p;
  Geometry g;
  bool has_sb = false;
  std::array<uint8_t, 16> uuid{};
};

Result<Resolved> resolve(CLI::App* c, const Opts& o, BlockDevice& hash, BlockDevice* data) {
  Resolved r;
  UDM_ASSIGN_OR_RETURN(uint64_t off, parse_size(o.hash_offset, "--hash-offset"));
  UDM_ASSIGN_OR_RETURN(uint32_t hbs, block_size(o.hbs, "--hash-block-size"));
  UDM_ASSIGN_OR_RETURN(uint32_t dbs, block_size(o.dbs, "--data-block-size"));
  if (!o.no_superblock) {
    if (off % 512) return Invalid(fmt::format("--hash-offset {} is not a multiple of 512", off));
    std::vector<uint8_t> b(kSuperblockSize);
    if (hash.size() < off + kSuperblockSize) return Invalid("hash device too small for a superblock");
    UDM_TRY(hash.read(off, b));
    auto sb = decode_superblock(b);
    if (!sb.ok()) return sb.status().context("hash device (use --no-superblock with every parameter if it has none)");
    r.has_sb = true;
    r.uuid = sb->uuid;
    r.p = params_of(*sb);  // hash_start below, from the offset
    auto differs = [&](const char* opt, bool d) -> Status {
      auto* op = c->get_option_no_throw(opt);
      if (op && op->count() && d) return Invalid(fmt::format("{} differs from the superblock's value", opt));
      return Status::Ok();
    };
    UDM_TRY(differs("--hash", o.alg != r.p.algorithm));
    UDM_TRY(differs("--format", o.format != r.p.hash_type));
    UDM_TRY(differs("--data-block-size", dbs != r.p.data_block_size));
    UDM_TRY(differs("--hash-block-size", hbs != r.p.hash_block_size));
    UDM_TRY(differs("--data-blocks", o.data_blocks != r.p.data_blocks));
    if (auto* so = c->get_option_no_throw("--salt"); so && so->count()) {
      UDM_ASSIGN_OR_RETURN(auto s, parse_salt(o.salt));
      UDM_TRY(differs("--salt", s != r.p.salt));
    }
    UDM_ASSIGN_OR_RETURN(r.p.hash_start, hash_start_for_offset(off, r.p.hash_block_size, true));
  } else {
    r.p.hash_type = o.format;
    r.p.algorithm = o.alg;
    r.p.data_block_size = dbs;
    r.p.hash_block_size = hbs;
    if (o.salt.empty()) return Invalid("--no-superblock needs --salt (hex, or '-' for none)");
    UDM_ASSIGN_OR_RETURN(r.p.salt, parse_salt(o.salt));
    r.p.data_blocks = o.data_blocks;
    if (!r.p.data_blocks) {
      if (!data) return Invalid("--no-superblock needs --data-blocks");
      r.p.data_blocks = data->size() / dbs;
    }
    UDM_ASSIGN_OR_RETURN(r.p.hash_start, hash_start_for_offset(off, hbs, false));
  }
  UDM_ASSIGN_OR_RETURN(r.g, compute_geometry(r.p));
  return r;
}

Result<std::vector<uint8_t>> root_arg(const Opts& o, size_t ds) {
  std::string hex = o.root;
  if (!o.root_hash_file.empty()) {
    std::ifstream f(o.root_hash_file);
    if (!f) return Invalid("cannot read --root-hash-file " + o.root_hash_file);
    std::string s((std::istreambuf_iterator<char>(f)), {});
    if (!s.empty() && s.back() == '\n') s.pop_back();  // veritysetup accepts one trailing newline
    if (!hex.empty() && hex != s) return Invalid("ROOT and --root-hash-file differ");
    hex = s;
  }
  if (hex.empty()) return Invalid("give the root hash (ROOT or --root-hash-file)");
  UDM_ASSIGN_OR_RETURN(auto r, from_hex(hex, "root hash"));
  if (r.size() != ds) return Invalid(fmt::format("root hash has {} bytes, the algorithm's digest {}", r.size(), ds));
  return r;
}

// A tool argument: a path (relative paths too, as veritysetup takes them), a
// URI, or (via the FUSE export) a udm device's file.
Result<DevicePtr> open_arg(const std::string& spec) {
  if (spec_kind(spec) == SpecKind::kName && access(spec.c_str(), F_OK) == 0) return open_path(spec, false);
  return Resolver().open(spec, false);
}

unsigned default_threads(unsigned t) { return t ? t : std::max(1u, std::thread::hardware_concurrency()); }

Status write_all(int fd, const uint8_t* p, size_t n, uint64_t off, const std::string& path) {
  while (n) {
    ssize_t w = pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("writing " + path);
    }
    p += w;
    n -= w;
    off += w;
  }
  return Status::Ok();
}

void cmd_format(CLI::App* c, const Opts& o) {
  auto run = [&]() -> Status {
    UDM_ASSIGN_OR_RETURN(uint32_t dbs, block_size(o.dbs, "--data-block-size"));
    UDM_ASSIGN_OR_RETURN(uint32_t hbs, block_size(o.hbs, "--hash-block-size"));
    UDM_ASSIGN_OR_RETURN(uint64_t off, parse_size(o.hash_offset, "--hash-offset"));
    if (dbs > 4096) std::cerr << "WARNING: Kernel cannot activate device if data block size exceeds page size (4096).\n";
    UDM_ASSIGN_OR_RETURN(DevicePtr data, open_arg(o.data));
    Params p;
    p.hash_type = o.format;
    p.algorithm = o.alg;
    for (auto& ch : p.algorithm) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
    p.data_block_size = dbs;
    p.hash_block_size = hbs;
    p.data_blocks = o.data_blocks ? o.data_blocks : data->size() / dbs;
    if (o.data_blocks && o.data_blocks > data->size() / dbs)
      return Invalid(fmt::format("--data-blocks {}: the data device holds only {} blocks", o.data_blocks, data->size() / dbs));
    if (o.salt.empty()) {
      p.salt.resize(32);
      if (RAND_bytes(p.salt.data(), 32) != 1) return IoError("RAND_bytes failed");
    } else {
      UDM_ASSIGN_OR_RETURN(p.salt, parse_salt(o.salt));
    }
    std::array<uint8_t, 16> uuid = random_uuid();
    if (!o.uuid.empty()) {
      UDM_ASSIGN_OR_RETURN(uuid, parse_uuid(o.uuid));
    }
    UDM_ASSIGN_OR_RETURN(p.hash_start, hash_start_for_offset(off, hbs, !o.no_superblock));
    UDM_ASSIGN_OR_RETURN(Geometry g, compute_geometry(p));
    if (same_file(o.data, o.hash) && p.data_blocks * dbs > off) return Invalid("Data area overlaps with hash area.");
    UDM_ASSIGN_OR_RETURN(Tree t, build_tree(p, *data, default_threads(o.threads)));
    int fd = ::open(o.hash.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("opening " + o.hash);
    Status st = Status::Ok();
    if (!o.no_superblock) {
      Superblock sb;
      sb.hash_type = p.hash_type;
      sb.uuid = uuid;
      sb.algorithm = p.algorithm;
      sb.data_block_size = dbs;
      sb.hash_block_size = hbs;
      sb.data_blocks = p.data_blocks;
      sb.salt = p.salt;
      auto b = encode_superblock(sb);
      st = write_all(fd, b.data(), b.size(), off, o.hash);
    }
    if (st.ok() && !t.blocks.empty()) st = write_all(fd, t.blocks.data(), t.blocks.size(), p.hash_start * hbs, o.hash);
    // Like veritysetup, a hash file is at least as long as the hash area.
    struct stat hst;
    if (st.ok() && fstat(fd, &hst) == 0 && S_ISREG(hst.st_mode) &&
        static_cast<uint64_t>(hst.st_size) < g.end_block() * hbs && ftruncate(fd, g.end_block() * hbs) != 0)
      st = ErrnoStatus("extending " + o.hash);
    if (st.ok() && fsync(fd) != 0) st = ErrnoStatus("fsync " + o.hash);
    ::close(fd);
    UDM_TRY(st);
    if (!o.root_hash_file.empty()) {
      std::ofstream f(o.root_hash_file, std::ios::binary | std::ios::trunc);
      f << to_hex(t.root);  // 2*ds hex digits, no newline (as veritysetup)
      if (!f.flush()) return Invalid("cannot write --root-hash-file " + o.root_hash_file);
    }
    print_header(o.hash, p, g, o.no_superblock ? nullptr : &uuid, &t.root, g.end_block() * hbs, off);
    return Status::Ok();
  };
  Status st = run();
  if (!st.ok()) cli::fail(st);
}

void cmd_verify(CLI::App* c, const Opts& o) {
  auto run = [&]() -> Status {
    UDM_ASSIGN_OR_RETURN(DevicePtr data, open_arg(o.data));
    UDM_ASSIGN_OR_RETURN(DevicePtr hash, open_arg(o.hash));
    UDM_ASSIGN_OR_RETURN(Resolved r, resolve(c, o, *hash, data.get()));
    UDM_ASSIGN_OR_RETURN(auto root, root_arg(o, r.g.digest_size));
    if (!o.signature.empty()) {
      std::ifstream f(o.signature, std::ios::binary);
      if (!f) return Invalid("cannot read --root-hash-signature " + o.signature);
      std::vector<uint8_t> sig((std::istreambuf_iterator<char>(f)), {});
      UDM_TRY(verify_root_signature(sig, to_hex(root), o.certs).context(o.signature));
      std::cout << "Root hash signature verified.\n";
    }
    UDM_ASSIGN_OR_RETURN(VerifyResult v, verify_tree(r.p, *data, *hash, root, default_threads(o.threads)));
    if (v.code != VerifyResult::kOk) {
      std::cerr << v.message << "\n";
      if (v.code == VerifyResult::kCorrupt) std::cerr << "Verification of data area failed.\n";
      cli::exit_code() = v.code;
      return Status::Ok();
    }
    std::cout << "Command successful.\n";
    return Status::Ok();
  };
  Status st = run();
  if (!st.ok()) cli::fail(st);
}

void cmd_dump(CLI::App* c, const Opts& o) {
  auto run = [&]() -> Status {
    UDM_ASSIGN_OR_RETURN(DevicePtr hash, open_arg(o.hash));
    if (o.no_superblock) return Invalid("verity-dump needs a superblock");
    UDM_ASSIGN_OR_RETURN(Resolved r, resolve(c, o, *hash, nullptr));
    UDM_ASSIGN_OR_RETURN(uint64_t off, parse_size(o.hash_offset, "--hash-offset"));
    print_header(o.hash, r.p, r.g, &r.uuid, nullptr, r.g.end_block() * r.p.hash_block_size, off);
    return Status::Ok();
  };
  Status st = run();
  if (!st.ok()) cli::fail(st);
}

void cmd_table(CLI::App* c, const Opts& o) {
  auto run = [&]() -> Status {
    UDM_ASSIGN_OR_RETURN(DevicePtr hash, open_arg(o.hash));
    DevicePtr data;
    if (o.no_superblock && !o.data_blocks) {
      UDM_ASSIGN_OR_RETURN(data, open_arg(o.data));
    }
    UDM_ASSIGN_OR_RETURN(Resolved r, resolve(c, o, *hash, data.get()));
    UDM_ASSIGN_OR_RETURN(auto root, root_arg(o, r.g.digest_size));
    VerityLine t;
    t.params = r.p;
    t.data_dev = o.data;
    t.hash_dev = o.hash;
    t.root = root;
    int modes = o.ignore_corruption + o.restart_on_corruption + o.panic_on_corruption;
    if (modes > 1) return Invalid("give at most one of --ignore-corruption, --restart-on-corruption, --panic-on-corruption");
    if (o.restart_on_error && o.panic_on_error) return Invalid("give at most one of --restart-on-error, --panic-on-error");
    if (o.ignore_corruption) t.corruption = ErrorMode::kIgnore;
    if (o.restart_on_corruption) t.corruption = ErrorMode::kRestart;
    if (o.panic_on_corruption) t.corruption = ErrorMode::kPanic;
    t.restart_on_error = o.restart_on_error;
    t.panic_on_error = o.panic_on_error;
    t.ignore_zero_blocks = o.ignore_zero_blocks;
    t.check_at_most_once = o.check_at_most_once;
    t.sig_key_desc = o.sig_key_desc;
    t.sig_file = o.sig_file;
    if (!t.sig_key_desc.empty() && !t.sig_file.empty())
      return Invalid("--root-hash-sig-key-desc and --root-hash-signature are exclusive");
    std::cout << fmt::format("0 {} verity {}\n", r.p.data_blocks * r.p.data_block_size / 512, format_table_args(t));
    return Status::Ok();
  };
  Status st = run();
  if (!st.ok()) cli::fail(st);
}

}  // namespace

void register_feature_verity_cli(CLI::App& app) {
  static Opts fo, vo, dopt, to;
  {
    auto* c = app.add_subcommand("verity-format", "Build a dm-verity hash tree (veritysetup format, byte-identical)");
    c->add_option("DATA", fo.data, "data device or image")->required();
    c->add_option("HASH", fo.hash, "hash device or file (created if missing); may equal DATA with --hash-offset")
        ->required();
    add_params(c, fo);
    c->add_option("--uuid", fo.uuid, "superblock UUID (default: random)");
    c->add_option("--root-hash-file", fo.root_hash_file, "write the root hash (hex, no newline) to this file");
    c->add_option("--threads", fo.threads, "hashing threads (default: all cores)");
    c->callback([c] { cmd_format(c, fo); });
  }
  {
    auto* c = app.add_subcommand("verity-verify",
                                 "Check a data device against its hash tree and root (veritysetup verify; exit 1 root "
                                 "mismatch, 2 corruption)");
    c->add_option("DATA", vo.data, "data device or image")->required();
    c->add_option("HASH", vo.hash, "hash device or file")->required();
    c->add_option("ROOT", vo.root, "root hash (hex)");
    add_params(c, vo);
    c->add_option("--root-hash-file", vo.root_hash_file, "read the root hash from this file");
    c->add_option("--root-hash-signature", vo.signature, "PKCS#7 (DER) signature of the root hash's hex string");
    c->add_option("--trusted-cert", vo.certs, "trusted certificate (PEM file or directory of *.crt); repeatable "
                                              "(default: /etc/verity.d /run/verity.d /usr/lib/verity.d)");
    c->add_option("--threads", vo.threads, "hashing threads (default: all cores)");
    c->callback([c] { cmd_verify(c, vo); });
  }
  {
    auto* c = app.add_subcommand("verity-dump", "Print a hash device's verity superblock (veritysetup dump)");
    c->add_option("HASH", dopt.hash, "hash device or file")->required();
    c->add_option("--hash-offset", dopt.hash_offset, "byte offset of the superblock");
    c->callback([c] { cmd_dump(c, dopt); });
  }
  {
    auto* c = app.add_subcommand("verity-table", "Print the kernel's verity table line for DATA HASH ROOT");
    c->add_option("DATA", to.data, "data device (as the table should name it)")->required();
    c->add_option("HASH", to.hash, "hash device (as the table should name it)")->required();
    c->add_option("ROOT", to.root, "root hash (hex)");
    add_params(c, to);
    c->add_option("--root-hash-file", to.root_hash_file, "read the root hash from this file");
    c->add_flag("--ignore-corruption", to.ignore_corruption, "option ignore_corruption");
    c->add_flag("--restart-on-corruption", to.restart_on_corruption, "option restart_on_corruption (udm: latch)");
    c->add_flag("--panic-on-corruption", to.panic_on_corruption, "option panic_on_corruption (udm: latch)");
    c->add_flag("--restart-on-error", to.restart_on_error, "option restart_on_error (udm: latch)");
    c->add_flag("--panic-on-error", to.panic_on_error, "option panic_on_error (udm: latch)");
    c->add_flag("--ignore-zero-blocks", to.ignore_zero_blocks, "option ignore_zero_blocks");
    c->add_flag("--check-at-most-once", to.check_at_most_once, "option check_at_most_once");
    c->add_option("--root-hash-sig-key-desc", to.sig_key_desc, "option root_hash_sig_key_desc DESC (kernel keyring)");
    c->add_option("--root-hash-signature", to.sig_file, "option root_hash_sig FILE.p7s (udm only)");
    c->callback([c] { cmd_table(c, to); });
  }
  // The daemon's signature policy (verity tables are built inside the daemon).
  CLI::App* d = nullptr;
  try {
    d = app.get_subcommand("daemon");
  } catch (const CLI::OptionNotFound&) {
  }
  if (d) {
    d->add_option_function<std::vector<std::string>>(
        "--verity-certs",
        [](const std::vector<std::string>& v) {
          auto p = verity::sig_policy();
          p.cert_paths = v;
          verity::set_sig_policy(p);
        },
        "trusted certificates for verity root-hash signatures: PEM files or directories of *.crt "
        "(default: /etc/verity.d /run/verity.d /usr/lib/verity.d)");
    d->add_flag_callback(
        "--require-signatures",
        [] {
          auto p = verity::sig_policy();
          p.require_signatures = true;
          verity::set_sig_policy(p);
        },
        "refuse verity tables without a root-hash signature");
  }
}

}  // namespace udm
