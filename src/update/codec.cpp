#include "update/codec.h"

#include <fmt/format.h>
#include <lz4.h>
#include <lz4hc.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>

namespace udm::update {

Result<Algo> algo_from_name(const std::string& n) {
  if (n == "none") return Algo::None;
  if (n == "zstd") return Algo::Zstd;
  if (n == "lz4") return Algo::Lz4;
  if (n == "deflate") return Algo::Deflate;
  return Invalid("unsupported compression '" + n + "' (supported: none, zstd, lz4, deflate)");
}

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::None: return "none";
    case Algo::Zstd: return "zstd";
    case Algo::Lz4: return "lz4";
    case Algo::Deflate: return "deflate";
  }
  return "?";
}

Result<std::vector<uint8_t>> compress(Algo a, std::span<const uint8_t> in, int level) {
  std::vector<uint8_t> out;
  switch (a) {
    case Algo::None:
      out.assign(in.begin(), in.end());
      return out;
    case Algo::Zstd: {
      out.resize(ZSTD_compressBound(in.size()));
      size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level ? level : 3);
      if (ZSTD_isError(n)) return IoError(std::string("zstd: ") + ZSTD_getErrorName(n));
      out.resize(n);
      return out;
    }
    case Algo::Lz4: {
      if (in.size() > LZ4_MAX_INPUT_SIZE) return Invalid("lz4: chunk too large");
      out.resize(static_cast<size_t>(LZ4_compressBound(static_cast<int>(in.size()))));
      int n = level > 1 ? LZ4_compress_HC(reinterpret_cast<const char*>(in.data()),
                                          reinterpret_cast<char*>(out.data()), static_cast<int>(in.size()),
                                          static_cast<int>(out.size()), level)
                        : LZ4_compress_default(reinterpret_cast<const char*>(in.data()),
                                               reinterpret_cast<char*>(out.data()),
                                               static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n <= 0) return IoError("lz4: compression failed");
      out.resize(static_cast<size_t>(n));
      return out;
    }
    case Algo::Deflate: {
      z_stream zs{};
      if (deflateInit2(&zs, level ? level : Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
                       Z_DEFAULT_STRATEGY) != Z_OK)
        return IoError("deflate: init failed");
      out.resize(deflateBound(&zs, in.size()));
      zs.next_in = const_cast<Bytef*>(in.data());
      zs.avail_in = static_cast<uInt>(in.size());
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      int rc = deflate(&zs, Z_FINISH);
      size_t n = zs.total_out;
      deflateEnd(&zs);
      if (rc != Z_STREAM_END) return IoError("deflate: compression failed");
      out.resize(n);
      return out;
    }
  }
  return Invalid("unknown algorithm");
}

Result<size_t> decompress(Algo a, std::span<const uint8_t> in, std::span<uint8_t> out) {
  switch (a) {
    case Algo::None:
      if (in.size() > out.size())
        return Corrupt(fmt::format("stored chunk of {} bytes is larger than a chunk ({})", in.size(), out.size()));
      if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());
      return in.size();
    case Algo::Zstd: {
      size_t n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
      if (ZSTD_isError(n)) return Corrupt(std::string("zstd: ") + ZSTD_getErrorName(n));
      return n;
    }
    case Algo::Lz4: {
      if (in.size() > INT32_MAX || out.size() > INT32_MAX) return Corrupt("lz4: chunk too large");
      int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                  static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n < 0) return Corrupt("lz4: malformed compressed data");
      return static_cast<size_t>(n);
    }
    case Algo::Deflate: {
      z_stream zs{};
      if (inflateInit2(&zs, -15) != Z_OK) return IoError("deflate: init failed");
      zs.next_in = const_cast<Bytef*>(in.data());
      zs.avail_in = static_cast<uInt>(in.size());
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      int rc = inflate(&zs, Z_FINISH);
      size_t n = zs.total_out;
      inflateEnd(&zs);
      if (rc != Z_STREAM_END) return Corrupt("deflate: malformed or oversized compressed data");
      return n;
    }
  }
  return Invalid("unknown algorithm");
}

}  // namespace udm::update
