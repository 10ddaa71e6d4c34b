// The update target over a remote diff pins what every open reads (its
// factory, src/update/target.cpp): the header (v1: and stash), the metadata
// (v1) or directory (v0), and v1's verity record (flag VERITY_TREE). Against
// nginx with a 1 MiB cache: the new image read whole through one device,
// then through a second device over the same diff (opened while the first
// holds its pins); nginx's log shows data blocks of the diff fetched again
// (evicted) but no pinned block fetched twice, and the source reports the
// pinned bytes. Every byte read equals the new image.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "device/mapped_device.h"
#include "device/table.h"
#include "io/file_device.h"
#include "io/resolver.h"
#include "remote_util.h"
#include "servers.h"
#include "update/format_v0_io.h"
#include "update/format_v1_io.h"

namespace udm::test {
namespace {

const uint64_t kBlock = remote::RemoteConfig{}.block_size;  // the cache's block


void add_blocks(std::set<uint64_t>& out, uint64_t off, uint64_t len) {
  if (len == 0) return;
  for (uint64_t b = off / kBlock; b <= (off + len - 1) / kBlock; b++) out.insert(b);
}

// Cache blocks of the diff each GET of `uri` covered (the opens' 1-byte probes left out).
std::map<uint64_t, int> fetches_per_block(const Nginx& ngx, const std::string& uri) {
  std::map<uint64_t, int> n;
  for (const auto& h : ngx.log()) {
    if (h.uri != uri || h.range == "bytes=0-0") continue;
    uint64_t a = 0, z = 0;
    EXPECT_EQ(sscanf(h.range.c_str(), "bytes=%lu-%lu", &a, &z), 2) << h.range;
    for (uint64_t b = a / kBlock; b <= z / kBlock; b++) n[b]++;
  }
  return n;
}

void read_whole_and_compare(MappedDevice& dev, const std::vector<uint8_t>& want, const std::string& what) {
  ASSERT_EQ(dev.size(), want.size()) << what;
  std::vector<uint8_t> got(want.size());
  for (uint64_t off = 0; off < want.size(); off += 256u << 10) {
    uint64_t n = std::min<uint64_t>(256u << 10, want.size() - off);
    Status st = dev.read(off, std::span<uint8_t>(got.data() + off, n));
    ASSERT_TRUE(st.ok()) << what << ": " << st.message();
  }
  expect_same(got, want, what);
}

void pins_survive(bool v1) {
  if (!run({"sh", "-c", "command -v veritysetup"}).ok()) GTEST_SKIP() << "veritysetup not installed";
  TempDir t, www, cache;
  public_dir(www);
  // 8 MiB of data, 3 MiB of it new (incompressible: the diff is larger than the cache).
  const uint64_t img = 8u << 20, blocks = img / 4096;
  auto old_data = random_bytes(img, 11);
  auto new_data = old_data;
  auto fresh = random_bytes(3u << 20, 12);
  std::copy(fresh.begin(), fresh.end(), new_data.begin() + (2u << 20));
  write_file(t.file("old.img"), old_data);
  write_file(t.file("new.img"), new_data);
  std::vector<std::string> diff_cmd = {udm_bin(), "update-diff", t.file("old.img"), t.file("new.img"),
                                       "-o", www.file("diff.img")};
  if (v1) {
    // Both images carry a dm-verity tree after their data; the diff regenerates the new one (VERITY_TREE).
    std::string root;
    for (const char* v : {"old", "new"}) {
      auto r = run({"veritysetup", "format", "--data-blocks", std::to_string(blocks), "--hash-offset",
                    std::to_string(img), t.file(std::string(v) + ".img"), t.file(std::string(v) + ".img")});
      ASSERT_TRUE(r.ok()) << r.describe();
      root = r.field("Root hash:");
    }
    ASSERT_EQ(root.size(), 64u);
    diff_cmd.insert(diff_cmd.end(), {"--verity-regenerate", std::to_string(img), "--verity-root", root});
  } else {
    diff_cmd.insert(diff_cmd.end(), {"--format", "v0"});
  }
  auto r = run(diff_cmd);
  ASSERT_TRUE(r.ok()) << r.describe();
  ::chmod(www.file("diff.img").c_str(), 0644);
  const std::vector<uint8_t> want = read_file(t.file("new.img"));
  const uint64_t diff_size = read_file(www.file("diff.img")).size();
  ASSERT_GT(diff_size, 2 * (1u << 20)) << "the diff must not fit the 1 MiB cache";

  // What the factory must pin, from the local copy of the diff through the same loaders.
  std::set<uint64_t> pinned;
  {
    auto f = FileDevice::open(www.file("diff.img"), FileOpenOptions{.writable = false});
    ASSERT_TRUE(f.ok()) << f.status().message();
    if (v1) {
      auto idx = update::load_v1(**f);
      ASSERT_TRUE(idx.ok()) << idx.status().message();
      ASSERT_GT(idx->h.verity_size, 0u);
      add_blocks(pinned, 0, update::kV1HeaderSize + uint64_t(idx->h.stash_blocks) * idx->block_size());
      add_blocks(pinned, idx->h.meta_offset, idx->h.meta_size);
      add_blocks(pinned, idx->h.verity_offset, idx->h.verity_size);
      EXPECT_GE(idx->h.verity_offset / kBlock, 8u) << "the verity record lies past the data, in its own block";
    } else {
      auto idx = update::load_diff(**f);
      ASSERT_TRUE(idx.ok()) << idx.status().message();
      add_blocks(pinned, 0, update::kSuperblockSize);
      add_blocks(pinned, idx->sb.dir_offset, idx->sb.dir_compressed_size);
      EXPECT_GE(idx->sb.dir_offset / kBlock, 8u) << "the directory lies past the chunks, in its own block";
    }
  }
  ASSERT_GE(pinned.size(), 2u);

  std::string err;
  auto ngx = Nginx::start(www.path(), &err);
  if (!ngx) GTEST_SKIP() << err;
  const std::string url = ngx->url("diff.img");
  set_remote(cache.path(), 1u << 20);
  ASSERT_TRUE(run({"cp", t.file("old.img"), t.file("sys.img")}).ok());
  Resolver res;
  auto make = [&](const std::string& name) -> std::shared_ptr<MappedDevice> {
    auto spec = parse_table(fmt::format("0 {} update {} {} 1 no_bg_update", want.size() / 512, t.file("sys.img"), url));
    EXPECT_TRUE(spec.ok()) << spec.status().message();
    if (!spec.ok()) return nullptr;
    auto tb = Table::build(*spec, res, TargetRegistry::builtin(), name);
    EXPECT_TRUE(tb.ok()) << tb.status().message();
    if (!tb.ok()) return nullptr;
    return std::make_shared<MappedDevice>(name, *tb);
  };
  auto u1 = make("u1");
  ASSERT_TRUE(u1);
  read_whole_and_compare(*u1, want, "u1");
  auto u2 = make("u2");  // loads header, metadata and record again: from the cache
  ASSERT_TRUE(u2);
  read_whole_and_compare(*u2, want, "u2");

  auto n = fetches_per_block(*ngx, "/diff.img");
  for (uint64_t b : pinned) EXPECT_EQ(n[b], 1) << "pinned block " << b << " fetched " << n[b] << " times";
  int refetched = 0;
  for (auto [b, c] : n)
    if (!pinned.count(b) && c > 1) refetched++;
  EXPECT_GT(refetched, 0) << "nothing was evicted: the test proves nothing";
  auto src = nlohmann::json::parse(remote::live_sources_json({url}));
  ASSERT_EQ(src.size(), 1u);
  uint64_t pinned_bytes = 0;
  for (uint64_t b : pinned) pinned_bytes += std::min(kBlock, diff_size - b * kBlock);
  EXPECT_EQ(src[0]["bytes_pinned"].get<uint64_t>(), pinned_bytes) << src.dump();
  EXPECT_LE(src[0]["bytes_cached"].get<uint64_t>(), (1u << 20) + kBlock) << src.dump();
  EXPECT_EQ(read_file(t.file("sys.img")), read_file(t.file("old.img"))) << "no_bg_update: nothing copied";
}

TEST(RemoteUpdatePin, V1HeaderMetadataAndVerityRecordStayCached) { pins_survive(true); }
TEST(RemoteUpdatePin, V0SuperblockAndDirectoryStayCached) { pins_survive(false); }

}  // namespace
}  // namespace udm::test
