// update-diff v1, phase "index old" (diff_v1_internal.h): SHA-256 of both
// images, XXH3 of every old block and which new blocks changed (two threads
// and a third for the SHA-256), then the old blocks by content hash and the
// anchor index of the old image.
#include <openssl/evp.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "update/diff_v1_internal.h"
#include "util/progress.h"

namespace udm::update::v1gen {

namespace {
std::array<uint8_t, 32> sha256(const uint8_t* p, size_t n) {
  std::array<uint8_t, 32> out{};
  unsigned len = 0;
  EVP_Digest(p, n, out.data(), &len, EVP_sha256(), nullptr);
  return out;
}
}  // namespace

void index_old(const Input& in, OldIndex& ix) {
  const DiffV1Options& o = in.o;
  const uint8_t* OLD = in.OLD;
  const uint8_t* NEW = in.NEW;
  const uint64_t bs = in.bs, size = in.size, old_size = in.old_size, blocks = in.blocks, old_blocks = in.old_blocks,
                 span = in.span;
  const unsigned threads = in.threads;
  std::array<uint8_t, 32>& old_sha = ix.old_sha;
  std::array<uint8_t, 32>& new_sha = ix.new_sha;
  std::vector<uint8_t>& changed = ix.changed;
  std::unordered_map<uint64_t, uint32_t>& index = ix.by_hash;
  std::vector<std::pair<uint64_t, uint64_t>>& aidx = ix.anchors;

  // Hashes: SHA-256 of both images, XXH3 of every old block, changed flags.
  std::vector<uint64_t> oh(old_blocks);
  changed.assign(blocks, 0);  // every new block past the old image's end is "changed"
  {
    Progress prog("update-diff: hashing", span, false);
    std::thread sh([&] {
      old_sha = sha256(OLD, old_size);
      new_sha = sha256(NEW, size);
    });
    parallel_for(span, threads, [&](size_t b) {
      if (b < old_blocks) oh[b] = XXH3_64bits(OLD + b * bs, bs);
      if (b < blocks) changed[b] = !in.generated(b) && (b >= old_blocks || std::memcmp(OLD + b * bs, NEW + b * bs, bs) != 0);
      if ((b & 255) == 0) prog.add(std::min<uint64_t>(256, span - b));
    });
    sh.join();
    prog.finish();
  }
  // Index of old blocks by content hash; blocks the update leaves alone first
  // (a COPY from them never conflicts).
  // (Old blocks past the new image's end are never overwritten either.)
  index.reserve(old_blocks * 2);
  for (int pass = 0; pass < 2; pass++)
    for (uint64_t b = 0; b < old_blocks; b++)
      if ((b < blocks && changed[b]) == (pass == 1)) index.emplace(oh[b], static_cast<uint32_t>(b));
  oh.clear();
  oh.shrink_to_fit();
  // Anchor index of old blocks (for similar blocks anywhere in old).
  // Entries are (key, byte position of the anchor's last byte in old).
  if (o.delta) {
    std::vector<std::vector<std::pair<uint64_t, uint64_t>>> parts(threads);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; t++)
      ts.emplace_back([&, t] {
        for (uint64_t b = t; b < old_blocks; b += threads)
          anchors(OLD + b * bs, bs, [&](uint64_t k, size_t i) { parts[t].push_back({k, b * bs + i}); });
        std::sort(parts[t].begin(), parts[t].end());
      });
    for (auto& t : ts) t.join();
    for (auto& p : parts) {
      size_t mid = aidx.size();
      aidx.insert(aidx.end(), p.begin(), p.end());
      std::inplace_merge(aidx.begin(), aidx.begin() + static_cast<ptrdiff_t>(mid), aidx.end());
      p.clear();
      p.shrink_to_fit();
    }
  }
}

}  // namespace udm::update::v1gen
