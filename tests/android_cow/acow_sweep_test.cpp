// Power-cut sweep over the merge: base and COW on one FaultDisk; the merge
// runs until write N cuts the power (unflushed writes dropped); the stack is
// rebuilt on what the disks kept; the view must be the new image, and the
// merge, restarted, must finish with the base equal to it. Every N.
#include <gtest/gtest.h>

#include "android_cow/acow_image.h"
#include "android_cow/acow_test_util.h"
#include "android_cow/acow_writer.h"
#include "io/fault_device.h"
#include "io/memory_device.h"

using namespace udm;
using namespace udm::acow;
using namespace udm::acow::test;

namespace {

// Under the sanitizers (5-10x slower: each cut re-reads and compares the whole
// image) the sweep takes about 64 evenly spread cuts plus the first and last
// few; the release build cuts after every write.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

struct Sweep {
  std::vector<uint8_t> base, cow, want;
  std::optional<uint64_t> label;
  uint32_t batch = 1024;
};

// Runs the merge over fault devices with a cut after `n` writes (or none).
// Returns the number of write operations the whole merge took when it finished.
uint64_t run_cut(const Sweep& s, uint64_t n, bool cut, std::vector<uint8_t>& base_out, std::vector<uint8_t>& cow_out) {
  auto disk = std::make_shared<FaultDisk>();
  auto base = std::make_shared<FaultDevice>(disk, s.base);
  auto cow = std::make_shared<FaultDevice>(disk, s.cow);
  auto img = CowImage::open(cow, base->size(), base->size(), s.label, true);
  EXPECT_TRUE(img.ok()) << img.status().to_string();
  if (!img.ok()) return 0;
  if (cut) disk->cut_after_writes(n);
  while ((*img)->merged() < (*img)->total()) {
    auto r = (*img)->merge_step(*base, *cow, s.batch);
    if (!r.ok()) break;
  }
  base_out = base->durable_image();
  cow_out = cow->durable_image();
  return disk->write_ops();
}

void sweep(const Sweep& s, const std::string& what) {
  std::vector<uint8_t> b, c;
  const uint64_t writes = run_cut(s, 0, false, b, c);
  ASSERT_TRUE(b == s.want) << what << ": the uncut merge is wrong";
  ASSERT_GT(writes, 2u);
  const uint64_t stride = kSanitized && writes > 128 ? writes / 64 : 1;
  for (uint64_t n = 0; n <= writes; n = (n < 8 || n + 8 >= writes) ? n + 1 : std::min(n + stride, writes - 8)) {
    run_cut(s, n, true, b, c);
    // Rebuilt on what survived: the view is the new image.
    auto base = std::make_shared<MemoryDevice>(b);
    auto cow = std::make_shared<MemoryDevice>(c);
    auto img = CowImage::open(cow, base->size(), base->size(), s.label, true);
    ASSERT_TRUE(img.ok()) << what << " cut after " << n << ": " << img.status().to_string();
    std::vector<uint8_t> view(base->size());
    ASSERT_TRUE((*img)->read(*base, 0, view).ok());
    ASSERT_TRUE(view == s.want) << what << ": the view after a cut at write " << n << " (merged "
                                << (*img)->merged() << ") is not the new image";
    // The restarted merge finishes with the base equal to it.
    while ((*img)->merged() < (*img)->total()) ASSERT_TRUE((*img)->merge_step(*base, *cow, s.batch).ok());
    ASSERT_TRUE(base->contents() == s.want) << what << ": merge restarted after a cut at write " << n;
  }
}

TEST(AndroidCowSweep, SharedVectorsEveryCut) {
  if (!have_vectors()) GTEST_SKIP() << "no " << vec_dir();
  // A sequence-data vector per version, in small batches so that there are
  // many records to cut between.
#ifdef ACOW_SWEEP_LONG
  for (const char* name : {"v3-zstd-64k"}) {
#else
  for (const char* name : {"v2-zstd-seq"}) {
#endif
    Sweep s;
    s.base = base_image();
    s.cow = udm::test::read_file(vec_dir() + "/" + name + ".cow");
    std::vector<uint8_t> all(s.base.size());
    {
      auto base = std::make_shared<MemoryDevice>(s.base, true);
      auto img = CowImage::open(std::make_shared<MemoryDevice>(s.cow, true), all.size(), all.size(), std::nullopt, false);
      ASSERT_TRUE(img.ok());
      ASSERT_TRUE((*img)->read(*base, 0, all).ok());
    }
    s.want = all;
    s.batch = 64;
    sweep(s, name);
  }
}

#ifndef ACOW_SWEEP_LONG
TEST(AndroidCowSweep, WriterOutputWithSelfXorEveryCut) {
  // Blocks similar to their old selves become XOR ops reading their own
  // block: the merge stashes their old bytes in the scratch area first.
  const uint32_t bs = 4096;
  const uint64_t blocks = 64;
  auto old_img = udm::test::random_bytes(blocks * bs, 5);
  auto nw = old_img;
  for (uint64_t b = 0; b < 8; b++) std::memcpy(nw.data() + (b + 20) * bs, old_img.data() + (b + 19) * bs, bs);  // shift
  for (uint64_t b = 40; b < 48; b++) nw[b * bs + 17] ^= 0x33;                                                     // similar
  std::memcpy(nw.data() + 50 * bs, old_img.data() + 51 * bs, bs);                                                 // swap
  std::memcpy(nw.data() + 51 * bs, old_img.data() + 50 * bs, bs);
  for (int v : {2, 3}) {
    WriterOptions o;
    o.version = v;
    WriterStats st;
    auto cow = make_cow(old_img, nw, o, &st);
    ASSERT_TRUE(cow.ok()) << cow.status().to_string();
    ASSERT_GE(st.self_xor, 8u);
    Sweep s{old_img, *cow, nw, std::nullopt, 4};
    sweep(s, "writer v" + std::to_string(v));
  }
}
#endif

}  // namespace
