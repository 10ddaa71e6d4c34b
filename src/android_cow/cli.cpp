// udm android-cow-info COW [--label N], udm android-cow-apply BASE COW [--label N].
#include <fmt/format.h>

#include <iostream>

#include "android_cow/acow_image.h"
#include "android_cow/acow_writer.h"
#include "device/target_args.h"
#include "update/diff_formats.h"
#include "cli/cli_common.h"
#include "io/file_device.h"
#include "util/progress.h"

namespace udm {
using namespace acow;

namespace {

void cmd_info(const std::string& path, std::optional<uint64_t> label) {
  auto dev = FileDevice::open(path, {.writable = false});
  if (!dev.ok()) return cli::fail(dev.status());
  auto f = parse_cow(**dev, label);
  if (!f.ok()) return cli::fail(f.status().context(path));
  const Header& h = f->h;
  std::string out = fmt::format(
      "format:            Android COW v{} (header {}.{}, {} bytes)\n"
      "block size:        {}\n"
      "compression:       {}{}\n"
      "scratch area:      {} bytes\n"
      "ops:               {} (COPY {}, REPLACE {} covering {} blocks, ZERO {}, XOR {})\n",
      f->version(), h.major, h.minor, h.header_size, h.block_size, comp_name(f->compression),
      f->version() == 3 ? fmt::format(", units up to {} bytes", f->max_unit) : std::string(), h.buffer_size,
      f->ops.size(), f->n_copy, f->n_replace, f->replace_blocks, f->n_zero, f->n_xor);
  if (f->version() == 2)
    out += fmt::format("op records:        {} (LABEL {}, CLUSTER {}, SEQUENCE {}), cluster_ops {}\nfooter:            {}\n",
                       f->n_records, f->n_label, f->n_cluster, f->n_sequence, h.cluster_ops, f->has_footer ? "yes" : "no (writer cut off)");
  else
    out += fmt::format("op array:          op_count {} of {} slots\nresume points:     count {}, max {}{}\n", h.op_count,
                       h.op_count_max, h.resume_point_count, h.resume_point_max,
                       h.resume_point_count > h.resume_point_max ? " (only the first max are stored)" : "");
  std::string labels;
  for (size_t i = 0; i < f->labels.size(); i++) labels += (i ? " " : "") + std::to_string(f->labels[i]);
  if (f->version() == 3) {
    labels.clear();
    for (const auto& rp : f->resume_points) labels += fmt::format("{}{}@op{}", labels.empty() ? "" : " ", rp.label, rp.op_index);
  }
  out += fmt::format("labels:            {}\n", labels.empty() ? "none" : labels);
  if (f->read_label) out += fmt::format("read up to label:  {}\n", *f->read_label);
  out += fmt::format("sequence data:     {}\n", f->has_sequence ? fmt::format("{} blocks", f->sequence.size()) : "none");
  auto order = build_merge_order(*f);
  Status v = order.ok() ? verify_merge_order(*f, *order) : order.status();
  out += fmt::format("merge order:       {}\n", v.ok() ? fmt::format("{} ops, safe in place", order->size()) : "invalid: " + v.message());
  out += fmt::format("merge progress:    num_merge_ops {}\n", h.num_merge_ops);
  out += fmt::format("file size:         {} bytes (ops and data end at {})\n", f->file_size, f->data_end);
  std::cout << out;
}

void cmd_apply(const std::string& base_path, const std::string& cow_path, std::optional<uint64_t> label) {
  auto base = FileDevice::open(base_path);
  if (!base.ok()) return cli::fail(base.status());
  auto cow = FileDevice::open(cow_path);
  if (!cow.ok()) return cli::fail(cow.status());
  auto img = CowImage::open(*cow, (*base)->size(), (*base)->size(), label, true);
  if (!img.ok()) return cli::fail(img.status().context(cow_path + ": nothing written"));
  const uint64_t start = (*img)->merged(), total = (*img)->total();
  Progress prog("android-cow-apply", total - start, false);
  uint64_t at = start;
  while (at < total) {
    auto r = (*img)->merge_step(**base, **cow);
    if (!r.ok()) return cli::fail(r.status().context(fmt::format("{}: merge stopped at op {} of {} (run again to resume)", cow_path, at, total)));
    prog.add(*r - at);
    at = *r;
  }
  prog.finish();
  std::cout << fmt::format("merged {} of {} ops into {}{}\n", total - start, total, base_path,
                           start ? fmt::format(" (resumed at {})", start) : "");
}

Status cmd_diff(int version, const update::ExternalDiffArgs& a) {
  WriterOptions o;
  o.version = version;
  UDM_ASSIGN_OR_RETURN(o.compression, comp_from_name(a.algorithm.empty() ? "zstd" : a.algorithm));
  if (!a.cow_unit.empty()) {
    if (version != 3) return Invalid("--cow-unit needs --format android-cow-v3 (v2 compresses every block alone)");
    UDM_ASSIGN_OR_RETURN(uint64_t u, parse_size(a.cow_unit, "--cow-unit"));
    if (u > (1u << 20)) return Invalid("--cow-unit: at most 256k");
    o.unit = static_cast<uint32_t>(u);
  }
  UDM_ASSIGN_OR_RETURN(WriterStats st, make_cow_file(a.old_path, a.new_path, a.out_path, o));
  std::cout << fmt::format(
      "{}: Android COW v{} ({}{}), {} of {} blocks changed: COPY {}, XOR {} ({} read their own block), REPLACE {} ops "
      "({} blocks), ZERO {}; {} COPY/XOR cycles broken by REPLACE; sequence data {} blocks; COW {} bytes ({:.2f}% of "
      "the image)\n",
      a.out_path, version, comp_name(o.compression), version == 3 ? fmt::format(", {} byte units", o.unit) : "",
      st.changed, st.blocks, st.copy, st.xor_ops, st.self_xor, st.replace_ops, st.replace_blocks, st.zero,
      st.cycles_broken, st.sequence, st.cow_bytes,
      st.blocks ? 100.0 * double(st.cow_bytes) / double(st.blocks * o.block_size) : 0.0);
  return Status::Ok();
}

}  // namespace

void register_feature_android_cow_cli(CLI::App& app) {
  update::external_diff_formats()["android-cow-v2"] = [](const update::ExternalDiffArgs& a) { return cmd_diff(2, a); };
  update::external_diff_formats()["android-cow-v3"] = [](const update::ExternalDiffArgs& a) { return cmd_diff(3, a); };
  {
    auto* sub = app.add_subcommand("android-cow-info", "print an Android COW file's header, ops, labels and merge order");
    auto path = std::make_shared<std::string>();
    auto label = std::make_shared<uint64_t>(0);
    sub->add_option("cow", *path, "COW file")->required();
    auto* lo = sub->add_option("--label", *label, "read up to this label (a v2 file without footer needs one)");
    sub->callback([path, label, lo] { cmd_info(*path, lo->count() ? std::optional<uint64_t>(*label) : std::nullopt); });
  }
  {
    auto* sub = app.add_subcommand("android-cow-apply", "merge an Android COW into BASE offline, in place (resumable)");
    auto a = std::make_shared<std::array<std::string, 2>>();
    auto label = std::make_shared<uint64_t>(0);
    sub->add_option("base", (*a)[0], "the old image, updated in place")->required();
    sub->add_option("cow", (*a)[1], "COW file (its num_merge_ops records the progress)")->required();
    auto* lo = sub->add_option("--label", *label, "read the COW up to this label");
    sub->callback([a, label, lo] { cmd_apply((*a)[0], (*a)[1], lo->count() ? std::optional<uint64_t>(*label) : std::nullopt); });
  }
}

}  // namespace udm
