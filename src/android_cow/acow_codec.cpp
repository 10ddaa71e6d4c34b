#include "android_cow/acow_codec.h"

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <lz4.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <memory>
#include <string>

namespace udm::acow {

Status decompress(Comp c, std::span<const uint8_t> in, std::span<uint8_t> out) {
  switch (c) {
    case Comp::None:
      if (in.size() != out.size())
        return Corrupt("uncompressed payload of " + std::to_string(in.size()) + " bytes, want " + std::to_string(out.size()));
      std::memcpy(out.data(), in.data(), in.size());
      return Status::Ok();
    case Comp::Gz: {
      uLongf n = out.size();
      int r = ::uncompress(out.data(), &n, in.data(), in.size());
      if (r != Z_OK || n != out.size()) return Corrupt("gz payload does not decode to " + std::to_string(out.size()) + " bytes");
      return Status::Ok();
    }
    case Comp::Brotli: {
      size_t n = out.size();
      auto r = BrotliDecoderDecompress(in.size(), in.data(), &n, out.data());
      if (r != BROTLI_DECODER_RESULT_SUCCESS || n != out.size())
        return Corrupt("brotli payload does not decode to " + std::to_string(out.size()) + " bytes");
      return Status::Ok();
    }
    case Comp::Lz4: {
      if (in.size() > INT32_MAX || out.size() > INT32_MAX) return Corrupt("lz4 payload too large");
      int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                  static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n < 0 || static_cast<size_t>(n) != out.size())
        return Corrupt("lz4 payload does not decode to " + std::to_string(out.size()) + " bytes");
      return Status::Ok();
    }
    case Comp::Zstd: {
      // One context per thread: ZSTD_decompress() allocates (and, at its
      // size, maps and unmaps) a fresh one per call.
      thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
      if (!dctx) return IoError("zstd: out of memory for a decompression context");
      size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), out.size(), in.data(), in.size());
      if (ZSTD_isError(n) || n != out.size())
        return Corrupt("zstd payload does not decode to " + std::to_string(out.size()) + " bytes");
      return Status::Ok();
    }
  }
  return Corrupt(std::string("unknown compression ") + comp_name(c));
}

Result<std::vector<uint8_t>> compress(Comp c, std::span<const uint8_t> in, int zstd_level) {
  std::vector<uint8_t> out;
  switch (c) {
    case Comp::None:
      return std::vector<uint8_t>(in.begin(), in.end());
    case Comp::Gz: {
      uLongf n = ::compressBound(in.size());
      out.resize(n);
      if (::compress2(out.data(), &n, in.data(), in.size(), 9) != Z_OK) return IoError("gz compression failed");
      out.resize(n);
      return out;
    }
    case Comp::Brotli: {
      size_t n = BrotliEncoderMaxCompressedSize(in.size());
      if (n == 0) n = in.size() + 1024;
      out.resize(n);
      if (!BrotliEncoderCompress(11, 22, BROTLI_MODE_GENERIC, in.size(), in.data(), &n, out.data()))
        return IoError("brotli compression failed");
      out.resize(n);
      return out;
    }
    case Comp::Lz4: {
      out.resize(LZ4_compressBound(static_cast<int>(in.size())));
      int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                   static_cast<int>(in.size()), static_cast<int>(out.size()));
      if (n <= 0) return IoError("lz4 compression failed");
      out.resize(n);
      return out;
    }
    case Comp::Zstd: {
      out.resize(ZSTD_compressBound(in.size()));
      size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), zstd_level > 0 ? zstd_level : 3);
      if (ZSTD_isError(n)) return IoError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
      out.resize(n);
      return out;
    }
  }
  return Invalid("unknown compression");
}

}  // namespace udm::acow
