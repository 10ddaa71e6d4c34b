// Fuzzes the root-hash signature check wrapper with arbitrary DER input
// against a fixed certificate: it must refuse cleanly (never accept, never
// read out of bounds). The seed corpus holds a valid signature by another key.
#include <cstdint>
#include <cstdio>
#include <string>

#include <unistd.h>

#include "verity/signature.h"

static const char kCert[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBgDCCASegAwIBAgIUE751cUP+u3xN5YUvcp86HMoXS7gwCgYIKoZIzj0EAwIw\n"
    "FTETMBEGA1UEAwwKdWRtLWZ1enplcjAgFw0yNjExMjYxMjQ2MTBaGA8yMTI2MTEw\n"
    "MjEyNDYxMFowFTETMBEGA1UEAwwKdWRtLWZ1enplcjBZMBMGByqGSM49AgEGCCqG\n"
    "SM49AwEHA0IABATCGkbACglSheOqdCXIm5zj/Y+fRMGivEW2D8V2KWWvCi+PSxZN\n"
    "xLs5hrbFfGFe7otTST2UR0ulOFk1T8NnEAGjUzBRMB0GA1UdDgQWBBSPRSzbApiJ\n"
    "oy15nVK8jgrrjHDV1TAfBgNVHSMEGDAWgBSPRSzbApiJoy15nVK8jgrrjHDV1TAP\n"
    "BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIF9uTNVnNc2iE2ZG/szF\n"
    "dIZ6IxEdrFRpwrtnXL2at+nzAiAIqpSwqtCjKYDa/e4zup31jFOzinCqZ9d2fOZD\n"
    "kTfr7A==\n"
    "-----END CERTIFICATE-----\n";

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::string path = [] {
    std::string p = "/tmp/udm-fuzz-verity-sig." + std::to_string(getpid()) + ".crt";
    if (FILE* f = fopen(p.c_str(), "w")) {
      fputs(kCert, f);
      fclose(f);
    }
    return p;
  }();
  static struct Remove {
    ~Remove() { unlink(path.c_str()); }
  } remove_at_exit;
  udm::Status s = udm::verity::verify_root_signature(
      std::span(data, size), "177efab624e6ae4efd9026708271c513f0ff76c14b13f5398c3c1d8be46f67f7", {path});
  if (s.ok()) __builtin_trap();  // nobody holds this certificate's key
  return 0;
}
