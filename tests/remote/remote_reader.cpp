// Test helper: remote_reader URL CACHE_DIR SEED — opens URL with the given
// cache and reads random 64 KiB pieces forever, printing "read N" after each
// (the crash test SIGKILLs it in the middle of fetches).
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "remote/config.h"
#include "remote/remote.h"

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  udm::remote::RemoteConfig c;
  c.cache_dir = argv[2];
  c.block_size = 64u << 10;
  udm::remote::set_config(c);
  auto d = udm::remote::open_remote(argv[1], false);
  if (!d.ok()) {
    fprintf(stderr, "%s\n", d.status().message().c_str());
    return 1;
  }
  std::mt19937_64 rng(std::stoull(argv[3]));
  std::vector<uint8_t> b(65536);
  for (int n = 0;; n++) {
    uint64_t off = rng() % ((*d)->size() - b.size());
    if (!(*d)->read(off, b).ok()) return 1;
    printf("read %d\n", n);
    fflush(stdout);
  }
}
