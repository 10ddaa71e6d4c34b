// Feature "overlaybd": the `udm overlaybd ...` tools.
#include <fmt/format.h>
#include <unistd.h>

#include <iostream>

#include "cli/cli_common.h"
#include "device/target_args.h"
#include "io/file_device.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/tar_format.h"
#include "overlaybd/targets.h"
#include "overlaybd/writer.h"
#include "overlaybd/zfile_device.h"

namespace udm {

namespace {

using namespace obd;

Result<DevicePtr> open_ro(const std::string& path) {
  auto f = FileDevice::open(path, {.writable = false});
  if (!f.ok()) return f.status();
  return DevicePtr(*f);
}

Status out_sink(const std::string& path, bool compress, const ZFileWriteOptions& zo, bool tar,
                std::unique_ptr<ByteSink>* sink) {
  UDM_ASSIGN_OR_RETURN(auto f, open_grow_file(path, true, true));
  if (compress) {
    ZFileWriteOptions o = zo;
    o.tar = tar;
    *sink = zfile_sink(f, o);
  } else {
    *sink = file_sink(f, tar);
  }
  return Status::Ok();
}

struct ZOpts {
  std::string algo = "lz4";
  uint32_t bs_kib = 4;
  bool no_verify = false;
  int threads = 2;
  Result<ZFileWriteOptions> get(bool overwrite) const {
    ZFileWriteOptions o;
    if (!parse_algo(algo, &o.algo)) return Invalid("--algorithm must be lz4 or zstd");
    if (bs_kib != 4 && bs_kib != 8 && bs_kib != 16 && bs_kib != 32 && bs_kib != 64)
      return Invalid("--bs must be 4, 8, 16, 32 or 64 (KiB)");
    o.block_size = bs_kib * 1024;
    o.verify = !no_verify;
    o.threads = threads;
    o.overwrite_header = overwrite;
    return o;
  }
  void add(CLI::App* s) {
    s->add_option("--algorithm", algo, "lz4 or zstd")->capture_default_str();
    s->add_option("--bs", bs_kib, "block size in KiB: 4, 8, 16, 32, 64")->capture_default_str();
    s->add_flag("--no-verify", no_verify, "no per-block CRC");
    s->add_option("--threads", threads, "compression threads")->capture_default_str();
  }
};

std::string flags_str(uint64_t f, const char* const* names, int n) {
  std::string s;
  for (int i = 0; i < n; i++)
    if (f & (1ull << i)) s += (s.empty() ? "" : "|") + std::string(names[i]);
  return fmt::format("0x{:x}{}{}{}", f, s.empty() ? "" : " (", s, s.empty() ? "" : ")");
}

Status print_info(const std::string& path, std::string* prev_uuid) {
  UDM_ASSIGN_OR_RETURN(DevicePtr blob, open_ro(path));
  std::cout << path << ":\n";
  static const char* zn[] = {"header", "data", "sealed", "header_overwrite", "digest", "index_compressed"};
  static const char* ln[] = {"header", "data", "sealed", "gc", "sparse_rw", "info_valid"};
  DevicePtr dev = blob;
  if (blob->size() >= 3 * kTarBlock) {
    std::vector<uint8_t> head(3 * kTarBlock);
    UDM_TRY(blob->read(0, head));
    if (is_tar_header(head)) {
      UDM_ASSIGN_OR_RETURN(TarMember m, parse_tar_member(head, blob->size()));
      std::cout << fmt::format("  tar wrapper: payload at {} size {}\n", m.offset, m.size);
      dev = std::make_shared<SliceDevice>(blob, m.offset, m.size);
    }
  }
  UDM_ASSIGN_OR_RETURN(DevicePtr lsmt, open_layer_blob(dev));
  if (auto* z = dynamic_cast<ZFileDevice*>(lsmt.get())) {
    const auto& h = z->header();
    const auto& f = z->layout().h;
    std::cout << fmt::format("  zfile: header flags {}\n", flags_str(h.flags, zn, 6));
    std::cout << fmt::format("  zfile: algo {} block_size {} verify {} blocks {} original {} stored {} ratio {:.3f}\n",
                             f.algo == 1 ? "lz4" : "zstd", f.block_size, f.verify, f.index_size,
                             f.original_file_size, z->stored_size(),
                             z->stored_size() ? double(f.original_file_size) / z->stored_size() : 0.0);
    std::cout << fmt::format("  zfile: index_offset {} index_crc 0x{:08x}\n", f.index_offset, f.index_crc);
  }
  std::vector<uint8_t> hb(kLsmtHeaderSize);
  if (lsmt->size() < kLsmtHeaderSize) return Corrupt("not an LSMT file (too small)");
  UDM_TRY(lsmt->read(0, hb));
  UDM_ASSIGN_OR_RETURN(LsmtHeader h, parse_lsmt_header(hb, "header"));
  std::cout << fmt::format("  lsmt header: flags {} vsize {} uuid {} parent {} version {}.{} tag \"{}\"\n",
                           flags_str(h.flags, ln, 6), h.virtual_size, h.uuid, h.parent_uuid, h.version,
                           h.sub_version, h.user_tag);
  if (!h.has(kLfIsDataFile)) {
    std::cout << fmt::format("  rw index file: {} records\n", (lsmt->size() - kLsmtHeaderSize) / 16);
    return Status::Ok();
  }
  if (!h.has(kLfSealed) && !h.has(kLfSparseRw)) {
    // An RW data file, unless it was sealed (then a trailer ends it).
    std::vector<uint8_t> tb(kLsmtHeaderSize);
    UDM_TRY(lsmt->read(lsmt->size() - kLsmtHeaderSize, tb));  // size >= 4096 checked above
    auto t = parse_lsmt_header(tb, "trailer");
    if (lsmt->size() < 2 * kLsmtHeaderSize || !t.ok() || t->has(kLfIsHeader)) {
      std::cout << fmt::format("  rw data file: {} bytes of data\n", lsmt->size() - kLsmtHeaderSize);
      return Status::Ok();
    }
  }
  UDM_ASSIGN_OR_RETURN(LsmtLayer L, open_lsmt_layer(lsmt, path));
  uint64_t data = 0, zero = 0, nz = 0;
  for (auto& e : L.entries) {
    if (e.zeroed) {
      zero += e.length;
      nz++;
    } else {
      data += e.length;
    }
  }
  std::cout << fmt::format("  lsmt trailer: flags {} index_offset {} index_size {}\n",
                           flags_str(L.trailer.flags, ln, 6), L.trailer.index_offset, L.trailer.index_size);
  std::cout << fmt::format("  index: {} entries ({} data, {} zeroed), {} padding; {} data sectors, {} zeroed sectors\n",
                           L.entries.size(), L.entries.size() - nz, nz, L.padding_entries, data, zero);
  if (prev_uuid) {
    if (!prev_uuid->empty()) {
      bool ok = is_zero_uuid(L.trailer.parent_uuid) || is_zero_uuid(*prev_uuid) || L.trailer.parent_uuid == *prev_uuid;
      std::cout << fmt::format("  chain: parent {} {} layer below ({})\n", L.trailer.parent_uuid,
                               ok ? "matches" : "DOES NOT MATCH", *prev_uuid);
    }
    *prev_uuid = L.trailer.uuid;
  }
  return Status::Ok();
}

}  // namespace

void register_feature_overlaybd_cli(CLI::App& app) {
  auto* ob = app.add_subcommand("overlaybd", "overlaybd ZFile/LSMT image tools");
  ob->require_subcommand(1);

  {  // create
    auto* s = ob->add_subcommand("create", "create an empty writable (RW) layer: data + index files");
    auto o = std::make_shared<std::tuple<std::string, std::string, std::string, std::string, std::string>>();
    s->add_option("data", std::get<0>(*o), "data file to create")->required();
    s->add_option("index", std::get<1>(*o), "index file to create")->required();
    s->add_option("--size", std::get<2>(*o), "virtual size in bytes (suffix K/M/G/T allowed)")->required();
    s->add_option("--uuid", std::get<3>(*o), "this layer's UUID (default random)");
    s->add_option("--parent-uuid", std::get<4>(*o), "UUID of the layer below");
    s->callback([o] {
      auto& [data, index, size, uuid, parent] = *o;
      auto v = parse_size(size, "--size");
      if (!v.ok()) return cli::fail(v.status());
      if ((!uuid.empty() && !valid_uuid_text(uuid)) || (!parent.empty() && !valid_uuid_text(parent)))
        return cli::fail(Invalid("--uuid/--parent-uuid must be XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX"));
      auto d = open_grow_file(data, true, true);
      if (!d.ok()) return cli::fail(d.status());
      auto x = open_grow_file(index, true, true);
      if (!x.ok()) return cli::fail(x.status());
      Status st = create_rw_layer(**d, **x, *v, uuid, parent);
      if (!st.ok()) return cli::fail(st);
    });
  }

  auto add_commit_opts = [](CLI::App* s, CommitOptions& c) {
    s->add_option("--uuid", c.uuid, "UUID of the new layer (default all-zero)");
    s->add_option("--parent-uuid,-p", c.parent_uuid, "parent UUID (default: the source's)");
    s->add_option("-m,--message", c.user_tag, "commit message (user tag, <= 256 bytes)");
  };

  {  // commit
    struct O {
      std::string data, index, out;
      CommitOptions c;
      bool z = false, tar = false;
      ZOpts zo;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("commit", "commit an RW layer into a read-only LSMT file (optionally ZFile)");
    s->add_option("data", o->data)->required();
    s->add_option("index", o->index)->required();
    s->add_option("out", o->out)->required();
    add_commit_opts(s, o->c);
    s->add_flag("-z,--compress", o->z, "write the result as a ZFile (header overwritten, like overlaybd-commit -z)");
    s->add_flag("-t,--tar", o->tar, "wrap the result in the tar container");
    o->zo.add(s);
    s->callback([o] {
      auto d = open_grow_file(o->data, false);
      if (!d.ok()) return cli::fail(d.status());
      auto x = open_grow_file(o->index, false);
      if (!x.ok()) return cli::fail(x.status());
      auto zo = o->zo.get(true);
      if (!zo.ok()) return cli::fail(zo.status());
      std::unique_ptr<ByteSink> sink;
      Status st = out_sink(o->out, o->z, *zo, o->tar, &sink);
      if (!st.ok()) return cli::fail(st);
      Progress p("commit", (*d)->size());
      st = commit_rw_layer(*d, *x, *sink, o->c, &p);
      p.finish();
      if (!st.ok()) {
        ::unlink(o->out.c_str());
        return cli::fail(st);
      }
    });
  }

  {  // seal
    struct O {
      std::string data, index, tag;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("seal", "seal an RW layer in place: its data file becomes a read-only LSMT file");
    s->add_option("data", o->data)->required();
    s->add_option("index", o->index)->required();
    s->add_option("-m,--message", o->tag, "user tag for the trailer");
    s->callback([o] {
      auto d = open_grow_file(o->data, true);
      if (!d.ok()) return cli::fail(d.status());
      auto x = open_grow_file(o->index, false);
      if (!x.ok()) return cli::fail(x.status());
      Status st = seal_rw_layer(*d, *x, o->tag);
      if (!st.ok()) return cli::fail(st);
    });
  }

  {  // commit-sealed
    struct O {
      std::string in, out;
      CommitOptions c;
      bool z = false, tar = false;
      ZOpts zo;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("commit-sealed", "commit a sealed RW data file into a compact read-only LSMT file");
    s->add_option("sealed", o->in)->required();
    s->add_option("out", o->out)->required();
    add_commit_opts(s, o->c);
    s->add_flag("-z,--compress", o->z, "write the result as a ZFile");
    s->add_flag("-t,--tar", o->tar, "wrap the result in the tar container");
    o->zo.add(s);
    s->callback([o] {
      auto in = open_ro(o->in);
      if (!in.ok()) return cli::fail(in.status());
      auto zo = o->zo.get(true);
      if (!zo.ok()) return cli::fail(zo.status());
      std::unique_ptr<ByteSink> sink;
      Status st = out_sink(o->out, o->z, *zo, o->tar, &sink);
      if (!st.ok()) return cli::fail(st);
      Progress p("commit", (*in)->size());
      st = commit_sealed(*in, *sink, o->c, &p);
      p.finish();
      if (!st.ok()) {
        ::unlink(o->out.c_str());
        return cli::fail(st);
      }
    });
  }

  {  // compress
    struct O {
      std::string in, out;
      bool tar = false, overwrite = false;
      ZOpts zo;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("compress", "compress a file (an LSMT layer) into a ZFile");
    s->add_option("in", o->in)->required();
    s->add_option("out", o->out)->required();
    s->add_flag("-t,--tar", o->tar, "wrap the result in the tar container");
    s->add_flag("--overwrite-header", o->overwrite, "rewrite the header with the final fields (as commit -z)");
    o->zo.add(s);
    s->callback([o] {
      auto in = open_ro(o->in);
      if (!in.ok()) return cli::fail(in.status());
      auto zo = o->zo.get(o->overwrite);
      if (!zo.ok()) return cli::fail(zo.status());
      std::unique_ptr<ByteSink> sink;
      Status st = out_sink(o->out, true, *zo, o->tar, &sink);
      if (!st.ok()) return cli::fail(st);
      Progress p("compress", (*in)->size());
      st = copy_to_sink(**in, *sink, &p);
      p.finish();
      if (!st.ok()) {
        ::unlink(o->out.c_str());
        return cli::fail(st);
      }
    });
  }

  {  // decompress
    struct O {
      std::string in, out;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("decompress", "write the plain contents of a ZFile (or tar-wrapped blob)");
    s->add_option("in", o->in)->required();
    s->add_option("out", o->out)->required();
    s->callback([o] {
      auto in = open_ro(o->in);
      if (!in.ok()) return cli::fail(in.status());
      auto dev = open_layer_blob(*in);
      if (!dev.ok()) return cli::fail(dev.status());
      auto f = open_grow_file(o->out, true, true);
      if (!f.ok()) return cli::fail(f.status());
      auto sink = file_sink(*f, false);
      Progress p("decompress", (*dev)->size());
      Status st = copy_to_sink(**dev, *sink, &p);
      p.finish();
      if (!st.ok()) return cli::fail(st);
    });
  }

  {  // from-raw
    struct O {
      std::string in, out;
      CommitOptions c;
      bool z = false, tar = false;
      ZOpts zo;
    };
    auto o = std::make_shared<O>();
    auto* s = ob->add_subcommand("from-raw", "convert a raw image into a base layer (zero ranges left unmapped)");
    s->add_option("raw", o->in)->required();
    s->add_option("out", o->out)->required();
    add_commit_opts(s, o->c);
    s->add_flag("-z,--compress", o->z, "write the layer as a ZFile");
    s->add_flag("-t,--tar", o->tar, "wrap the result in the tar container");
    o->zo.add(s);
    s->callback([o] {
      auto in = open_ro(o->in);
      if (!in.ok()) return cli::fail(in.status());
      auto zo = o->zo.get(true);
      if (!zo.ok()) return cli::fail(zo.status());
      std::unique_ptr<ByteSink> sink;
      Status st = out_sink(o->out, o->z, *zo, o->tar, &sink);
      if (!st.ok()) return cli::fail(st);
      Progress p("from-raw", (*in)->size());
      st = raw_to_layer(**in, *sink, o->c, &p);
      p.finish();
      if (!st.ok()) {
        ::unlink(o->out.c_str());
        return cli::fail(st);
      }
    });
  }

  {  // info
    auto files = std::make_shared<std::vector<std::string>>();
    auto* s = ob->add_subcommand("info", "print headers, index statistics and the layer chain (files lowest first)");
    s->add_option("files", *files)->required();
    s->callback([files] {
      std::string prev;
      for (auto& f : *files) {
        Status st = print_info(f, files->size() > 1 ? &prev : nullptr);
        if (!st.ok()) return cli::fail(st.context(f));
      }
    });
  }
}

}  // namespace udm
