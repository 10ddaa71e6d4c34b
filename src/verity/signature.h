// Root-hash signatures the way the kernel (dm-verity-verify-sig.c) and
// systemd's user-space fallback check them: a DER PKCS#7 detached signature
// whose content is the root digest's hex string exactly as the table gives
// it (lowercase from every tool, no newline), signed by one of the trusted
// certificates (no chain building: PKCS7_NOINTERN | PKCS7_NOVERIFY).
#pragma once

#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace udm::verity {

// Process-wide signature policy; the daemon sets it from
// `udm daemon --verity-certs PATH... --require-signatures`.
struct SigPolicy {
  std::vector<std::string> cert_paths;  // files (PEM, one or more certs) or directories (*.crt)
  bool require_signatures = false;
};
SigPolicy sig_policy();
void set_sig_policy(SigPolicy p);
// systemd's verity.d directories: /etc/verity.d /run/verity.d /usr/lib/verity.d.
std::vector<std::string> default_cert_paths();

// Checks `sig` (DER PKCS#7) over `root_hex` against the certificates at
// `cert_paths` (empty: the policy's, or the defaults). Errors: EBADMSG for a
// malformed signature, ENOKEY when no certificate is found, EKEYREJECTED when
// the signature does not verify. Never throws, never reads past `sig`.
Status verify_root_signature(std::span<const uint8_t> sig, std::string_view root_hex,
                             const std::vector<std::string>& cert_paths);

// The payload of the kernel `user` key `desc`, searched with request_key(2)
// in the process's keyrings and then in the user keyring (`keyctl padd user
// NAME @u`), read with keyctl(KEYCTL_READ).
Result<std::vector<uint8_t>> read_user_key(const std::string& desc);

}  // namespace udm::verity
