// Helpers shared by the overlaybd tests.
#pragma once

#include <openssl/evp.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/sys_util.h"
#include "device/block_device.h"
#include "io/file_device.h"
#include "io/memory_device.h"
#include "io/grow_file.h"
#include "overlaybd/lsmt_device.h"
#include "overlaybd/zfile_device.h"

namespace udm::obd::test {

inline std::string hex(const uint8_t* d, size_t n) {
  static const char* x = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += x[d[i] >> 4];
    s += x[d[i] & 15];
  }
  return s;
}

inline std::string sha256(const uint8_t* p, size_t n) {
  uint8_t md[32];
  unsigned len = 0;
  EVP_Digest(p, n, md, &len, EVP_sha256(), nullptr);
  return hex(md, 32);
}

// sha256 of a whole device, and optionally of each MiB.
inline std::string sha256_dev(BlockDevice& d, std::vector<std::string>* per_mib = nullptr) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < d.size(); off += buf.size()) {
    size_t n = std::min<uint64_t>(buf.size(), d.size() - off);
    Status st = d.read(off, std::span<uint8_t>(buf.data(), n));
    if (!st.ok()) {
      EVP_MD_CTX_free(ctx);
      return "read error: " + st.to_string();
    }
    EVP_DigestUpdate(ctx, buf.data(), n);
    if (per_mib) per_mib->push_back(sha256(buf.data(), n));
  }
  uint8_t md[32];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  return hex(md, 32);
}

inline std::string data_dir() { return udm::test::shared_dir() + "/data/overlaybd"; }

inline nlohmann::json expected() {
  std::ifstream f(data_dir() + "/expected.json");
  return nlohmann::json::parse(f);
}

inline DevicePtr open_file(const std::string& path) {
  auto f = FileDevice::open(path, {.writable = false});
  if (!f.ok()) return nullptr;
  return *f;
}

inline DevicePtr mem(std::vector<uint8_t> v) { return std::make_shared<MemoryDevice>(std::move(v), true); }

// Opens a layer blob (tar/zfile/raw) and its LSMT index.
inline Result<LsmtLayer> layer_from(DevicePtr blob, const std::string& name = "") {
  UDM_ASSIGN_OR_RETURN(DevicePtr d, open_layer_blob(std::move(blob)));
  return open_lsmt_layer(d, name);
}

inline Result<std::shared_ptr<LsmtDevice>> stack(std::vector<DevicePtr> blobs,
                                                 std::optional<RwLayerFiles> rw = std::nullopt) {
  std::vector<LsmtLayer> layers;
  for (auto& b : blobs) {
    UDM_ASSIGN_OR_RETURN(LsmtLayer L, layer_from(b));
    layers.push_back(std::move(L));
  }
  return LsmtDevice::open(std::move(layers), std::move(rw));
}

}  // namespace udm::obd::test
