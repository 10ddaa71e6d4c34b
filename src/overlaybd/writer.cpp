#include "overlaybd/writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "util/crc.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/tar_format.h"
#include "util/endian.h"

namespace udm::obd {
namespace {

class FileSink : public ByteSink {
 public:
  FileSink(GrowFilePtr f, bool tar) : f_(std::move(f)), tar_(tar) {
    if (tar_) base_ = 3 * kTarBlock;
  }
  Status write(std::span<const uint8_t> d) override {
    // Buffer to 1 MiB to keep syscalls large.
    buf_.insert(buf_.end(), d.begin(), d.end());
    pos_ += d.size();
    if (buf_.size() >= (1u << 20)) return drain();
    return Status::Ok();
  }
  uint64_t position() const override { return pos_; }
  Status barrier() override {
    UDM_TRY(drain());
    return f_->sync();
  }
  Status finish() override {
    if (tar_) {
      // The wrapper names the payload only once the payload is durable.
      UDM_TRY(barrier());
      UDM_TRY(f_->pwrite(0, tar_prefix(pos_)));
      auto suf = tar_suffix(pos_);
      UDM_TRY(f_->pwrite(base_ + pos_, suf));
    }
    UDM_TRY(drain());
    return f_->sync();
  }
  // For the ZFile sink: write at an absolute (payload) offset.
  Status pwrite_at(uint64_t off, std::span<const uint8_t> d) {
    UDM_TRY(drain());
    return f_->pwrite(base_ + off, d);
  }

 private:
  Status drain() {
    if (buf_.empty()) return Status::Ok();
    UDM_TRY(f_->pwrite(base_ + written_, buf_));
    written_ += buf_.size();
    buf_.clear();
    return Status::Ok();
  }
  GrowFilePtr f_;
  bool tar_;
  uint64_t base_ = 0, pos_ = 0, written_ = 0;
  std::vector<uint8_t> buf_;
};

class ZFileSink : public ByteSink {
 public:
  ZFileSink(GrowFilePtr out, const ZFileWriteOptions& o) : out_(std::move(out), o.tar), o_(o) {
    h_.flags = kZfIsHeader | kZfIsDataFile | kZfDigest;
    h_.block_size = o.block_size;
    h_.algo = static_cast<uint8_t>(o.algo);
    h_.verify = o.verify ? 1 : 0;
    std::vector<uint8_t> hb(kZFileHeaderSize);
    encode_zfile_header(h_, hb);
    st_ = out_.write(hb);
  }
  Status write(std::span<const uint8_t> d) override {
    UDM_TRY(st_);
    in_.insert(in_.end(), d.begin(), d.end());
    pos_ += d.size();
    if (in_.size() >= kBatch * o_.block_size) return compress_batch(false);
    return Status::Ok();
  }
  uint64_t position() const override { return pos_; }
  // The ZFile's trailer commits it (finish() orders that); nothing to do
  // for a commit record inside the compressed stream.
  Status barrier() override { return st_; }
  Status finish() override {
    UDM_TRY(st_);
    UDM_TRY(compress_batch(true));
    // Index: one uint32 stored length per block, then the trailer.
    std::vector<uint8_t> idx(lens_.size() * 4);
    for (size_t i = 0; i < lens_.size(); i++) put_le32(idx.data() + 4 * i, lens_[i]);
    ZFileHeader f = h_;
    f.index_offset = out_.position();
    f.index_size = lens_.size();
    f.original_file_size = pos_;
    f.index_crc = crc32c_raw(0, idx.data(), idx.size());
    UDM_TRY(out_.write(idx));
    // Blocks and index durable before the trailer (and the rewritten
    // header) that make the file valid.
    UDM_TRY(out_.barrier());
    f.flags = kZfIsDataFile | kZfSealed | kZfDigest;
    std::vector<uint8_t> hb(kZFileHeaderSize);
    encode_zfile_header(f, hb);
    UDM_TRY(out_.write(hb));
    if (o_.overwrite_header) {
      f.flags = kZfIsHeader | kZfIsDataFile | kZfHeaderOverwrite | kZfDigest;
      encode_zfile_header(f, hb);
      UDM_TRY(out_.pwrite_at(0, hb));
    }
    return out_.finish();
  }

 private:
  static constexpr size_t kBatch = 256;
  // Compresses whole blocks of in_ (all of it when last) with o_.threads workers.
  Status compress_batch(bool last) {
    size_t bs = o_.block_size;
    size_t n = last ? (in_.size() + bs - 1) / bs : in_.size() / bs;
    if (n == 0) return Status::Ok();
    std::vector<std::vector<uint8_t>> outs(n);
    std::vector<Status> sts(n);
    auto work = [&](size_t first, size_t step) {
      for (size_t i = first; i < n; i += step) {
        size_t len = std::min(bs, in_.size() - i * bs);
        sts[i] = zfile_encode_block(o_.algo, o_.verify, std::span<const uint8_t>(in_.data() + i * bs, len), outs[i]);
      }
    };
    int t = std::max(1, o_.threads);
    std::vector<std::thread> th;
    for (int k = 1; k < t; k++) th.emplace_back(work, k, t);
    work(0, t);
    for (auto& x : th) x.join();
    for (size_t i = 0; i < n; i++) {
      UDM_TRY(sts[i]);
      lens_.push_back(static_cast<uint32_t>(outs[i].size()));
      UDM_TRY(out_.write(outs[i]));
    }
    in_.erase(in_.begin(), in_.begin() + std::min(in_.size(), n * bs));
    return Status::Ok();
  }
  FileSink out_;
  ZFileWriteOptions o_;
  ZFileHeader h_;
  Status st_;
  std::vector<uint8_t> in_;
  std::vector<uint32_t> lens_;
  uint64_t pos_ = 0;
};

}  // namespace

std::unique_ptr<ByteSink> file_sink(GrowFilePtr out, bool tar) {
  return std::make_unique<FileSink>(std::move(out), tar);
}

std::unique_ptr<ByteSink> zfile_sink(GrowFilePtr out, const ZFileWriteOptions& opts) {
  return std::make_unique<ZFileSink>(std::move(out), opts);
}

bool parse_algo(const std::string& s, ZAlgo* out) {
  if (s == "lz4") *out = ZAlgo::kLz4;
  else if (s == "zstd") *out = ZAlgo::kZstd;
  else return false;
  return true;
}

Status write_committed(uint64_t vsize, const std::string& src_parent, const std::vector<Seg>& segs,
                       const ReadFn& read_data, ByteSink& out, const CommitOptions& opts, Progress* progress) {
  LsmtHeader h;
  h.flags = kLfIsHeader | kLfIsDataFile | kLfSealed;
  h.virtual_size = vsize;
  h.uuid = opts.uuid.empty() ? "00000000-0000-0000-0000-000000000000" : opts.uuid;
  h.parent_uuid = opts.parent_uuid.empty() ? src_parent : opts.parent_uuid;
  h.user_tag = opts.user_tag;
  std::vector<uint8_t> hb(kLsmtHeaderSize);
  encode_lsmt_header(h, hb);
  UDM_TRY(out.write(hb));
  // Data in increasing virtual offset; zeroed entries take the current position.
  std::vector<LsmtEntry> entries;
  std::vector<uint8_t> buf;
  uint64_t pos = kLsmtHeaderSize / 512;
  for (const Seg& s : segs) {
    for (uint64_t off = s.start; off < s.end;) {
      uint64_t n = std::min<uint64_t>(kLsmtMaxEntryLen, s.end - off);
      LsmtEntry e;
      e.offset = off;
      e.length = static_cast<uint32_t>(n);
      e.zeroed = s.zeroed;
      e.moffset = pos;
      if (!s.zeroed) {
        buf.resize(n * 512);
        UDM_TRY(read_data((s.moffset + (off - s.start)) * 512, buf));
        UDM_TRY(out.write(buf));
        pos += n;
        if (progress) progress->add(n * 512);
      }
      entries.push_back(e);
      off += n;
    }
  }
  entries = merge_commit_entries(entries);
  uint64_t index_offset = pos * 512;
  size_t count = (entries.size() + 255) / 256 * 256;
  if (count == 0) count = 256;
  std::vector<uint8_t> idx(count * 16);
  for (size_t i = 0; i < count; i++)
    encode_lsmt_entry(i < entries.size() ? entries[i] : lsmt_padding_entry(), idx.data() + 16 * i);
  UDM_TRY(out.write(idx));
  // Data and index durable before the trailer that makes the file valid.
  UDM_TRY(out.barrier());
  h.flags = kLfIsDataFile | kLfSealed;
  h.index_offset = index_offset;
  h.index_size = count;
  encode_lsmt_header(h, hb);
  UDM_TRY(out.write(hb));
  return out.finish();
}

Status commit_rw_layer(GrowFilePtr data, GrowFilePtr index, ByteSink& out, const CommitOptions& opts,
                       Progress* progress) {
  UDM_ASSIGN_OR_RETURN(auto dev, LsmtDevice::open({}, RwLayerFiles{data, index}, LsmtDevice::Options{false}));
  auto segs = dev->rw_segments();
  const LsmtHeader& h = dev->rw_header();
  return write_committed(h.virtual_size, h.parent_uuid, segs,
                         [&](uint64_t off, std::span<uint8_t> b) { return data->pread(off, b); }, out, opts,
                         progress);
}

Status seal_rw_layer(GrowFilePtr data, GrowFilePtr index, const std::string& user_tag) {
  UDM_ASSIGN_OR_RETURN(auto dev, LsmtDevice::open({}, RwLayerFiles{data, index}, LsmtDevice::Options{false}));
  auto segs = dev->rw_segments();
  LsmtHeader h = dev->rw_header();
  dev.reset();  // flushes nothing new: the layer was only read
  uint64_t index_offset = (data->size() + 511) / 512 * 512;
  std::vector<uint8_t> idx((segs.size() * 16 + 511) / 512 * 512, 0);
  size_t n = 0;
  for (const Seg& s : segs) {
    for (uint64_t off = s.start; off < s.end;) {
      uint64_t len = std::min<uint64_t>(kLsmtMaxEntryLen, s.end - off);
      LsmtEntry e{off, static_cast<uint32_t>(len), s.zeroed ? s.moffset : s.moffset + (off - s.start), s.zeroed, 0};
      if (idx.size() < (n + 1) * 16) idx.resize((n + 1) * 16 + 512, 0);
      encode_lsmt_entry(e, idx.data() + 16 * n++);
      off += len;
    }
  }
  idx.resize((n * 16 + 511) / 512 * 512);
  h.flags = kLfIsDataFile | kLfSealed;
  h.index_offset = index_offset;
  h.index_size = n;
  if (!user_tag.empty()) h.user_tag = user_tag;
  std::vector<uint8_t> tb(kLsmtHeaderSize);
  encode_lsmt_header(h, tb);
  // Index durable before the trailer that makes the file a sealed layer.
  UDM_TRY(data->pwrite(index_offset, idx));
  UDM_TRY(data->sync());
  UDM_TRY(data->pwrite(index_offset + idx.size(), tb));
  return data->sync();
}

Status commit_sealed(DevicePtr sealed, ByteSink& out, const CommitOptions& opts, Progress* progress) {
  UDM_ASSIGN_OR_RETURN(LsmtLayer L, open_lsmt_layer(sealed, "sealed"));
  std::vector<Seg> segs;
  for (auto& e : L.entries) segs.push_back(Seg{e.offset, e.end(), e.moffset, 0, e.zeroed});
  return write_committed(L.trailer.virtual_size, L.trailer.parent_uuid, segs,
                         [&](uint64_t o, std::span<uint8_t> b) { return L.file->read(o, b); }, out, opts, progress);
}

Status raw_to_layer(BlockDevice& raw, ByteSink& out, const CommitOptions& opts, Progress* progress) {
  uint64_t size = raw.size();
  if (size % 512) return Invalid(fmt::format("raw image size {} is not a multiple of 512", size));
  // Pass 1: the non-zero sector runs, cut like 4 MiB RW writes.
  std::vector<Seg> segs;
  std::vector<uint8_t> buf(4u << 20);
  uint64_t run_start = UINT64_MAX;
  auto close_run = [&](uint64_t end) {
    for (uint64_t s = run_start; s < end; s += kLsmtRwMaxWrite) {
      uint64_t e = std::min<uint64_t>(end, s + kLsmtRwMaxWrite);
      segs.push_back(Seg{s, e, s, 0, false});
    }
    run_start = UINT64_MAX;
  };
  static const uint8_t zero[512] = {};
  for (uint64_t off = 0; off < size; off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), size - off);
    UDM_TRY(raw.read(off, std::span<uint8_t>(buf.data(), n)));
    for (size_t i = 0; i < n; i += 512) {
      uint64_t sec = (off + i) / 512;
      bool z = std::memcmp(buf.data() + i, zero, 512) == 0;
      if (!z && run_start == UINT64_MAX) run_start = sec;
      if (z && run_start != UINT64_MAX) close_run(sec);
    }
  }
  if (run_start != UINT64_MAX) close_run(size / 512);
  return write_committed(size, "", segs, [&](uint64_t o, std::span<uint8_t> b) { return raw.read(o, b); },
                         out, opts, progress);
}

Status copy_to_sink(BlockDevice& in, ByteSink& out, Progress* progress) {
  std::vector<uint8_t> buf(4u << 20);
  uint64_t size = in.size();
  for (uint64_t off = 0; off < size; off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), size - off);
    UDM_TRY(in.read(off, std::span<uint8_t>(buf.data(), n)));
    UDM_TRY(out.write(std::span<const uint8_t>(buf.data(), n)));
    if (progress) progress->add(n);
  }
  return out.finish();
}

}  // namespace udm::obd
