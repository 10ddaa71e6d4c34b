#include "verity/signature.h"

#include <dirent.h>
#include <fmt/format.h>
#include <linux/keyctl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

namespace udm::verity {

namespace {

std::mutex g_mu;
SigPolicy g_policy;

std::string openssl_error() {
  unsigned long e = ERR_get_error();
  std::string s;
  while (e) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!s.empty()) s += "; ";
    s += buf;
    e = ERR_get_error();
  }
  return s.empty() ? "unknown OpenSSL error" : s;
}

struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using CertStack = std::unique_ptr<STACK_OF(X509), StackFree>;

Status load_cert_file(const std::string& path, STACK_OF(X509) * out, bool& any) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(path.c_str(), "r"), BIO_free);
  if (!bio) {
    ERR_clear_error();
    return Status::Error(ENOKEY, fmt::format("cannot read certificate file {}", path));
  }
  int n = 0;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    sk_X509_push(out, x);
    n++;
  }
  ERR_clear_error();  // the end of the file reads as an error
  if (n == 0) return Status::Error(ENOKEY, fmt::format("{}: no PEM certificate in it", path));
  any = true;
  return Status::Ok();
}

Result<CertStack> load_certs(const std::vector<std::string>& paths, bool explicit_paths) {
  CertStack certs(sk_X509_new_null());
  bool any = false;
  for (const auto& p : paths) {
    struct stat st;
    if (stat(p.c_str(), &st) != 0) {
      if (explicit_paths) return Status::Error(ENOKEY, fmt::format("certificate path {} does not exist", p));
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      struct DirClose { void operator()(DIR* x) const { closedir(x); } };
      std::unique_ptr<DIR, DirClose> d(opendir(p.c_str()));
      if (!d) continue;
      std::vector<std::string> names;
      while (dirent* e = readdir(d.get())) {
        std::string n = e->d_name;
        if (n.size() > 4 && n.compare(n.size() - 4, 4, ".crt") == 0) names.push_back(n);
      }
      std::sort(names.begin(), names.end());
      for (auto& n : names) UDM_TRY(load_cert_file(p + "/" + n, certs.get(), any));
    } else {
      UDM_TRY(load_cert_file(p, certs.get(), any));
    }
  }
  if (!any) {
    std::string where;
    for (auto& p : paths) where += (where.empty() ? "" : ", ") + p;
    return Status::Error(ENOKEY, fmt::format("no trusted certificate (*.crt) found in {}", where.empty() ? "(none)" : where));
  }
  return certs;
}

}  // namespace

SigPolicy sig_policy() {
  std::lock_guard l(g_mu);
  return g_policy;
}

void set_sig_policy(SigPolicy p) {
  std::lock_guard l(g_mu);
  g_policy = std::move(p);
}

std::vector<std::string> default_cert_paths() { return {"/etc/verity.d", "/run/verity.d", "/usr/lib/verity.d"}; }

Status verify_root_signature(std::span<const uint8_t> sig, std::string_view root_hex,
                             const std::vector<std::string>& cert_paths) {
  ERR_clear_error();
  if (sig.empty()) return Status::Error(EBADMSG, "root hash signature is empty");
  if (sig.size() > (1u << 20)) return Status::Error(EBADMSG, "root hash signature is larger than 1 MiB");
  const unsigned char* pp = sig.data();
  std::unique_ptr<PKCS7, decltype(&PKCS7_free)> p7(d2i_PKCS7(nullptr, &pp, static_cast<long>(sig.size())), PKCS7_free);
  if (!p7) {
    std::string e = openssl_error();
    return Status::Error(EBADMSG, "root hash signature is not a DER PKCS#7 structure (" + e + ")");
  }
  if (pp != sig.data() + sig.size())
    return Status::Error(EBADMSG, fmt::format("root hash signature has {} trailing bytes after the PKCS#7 structure",
                                              sig.data() + sig.size() - pp));
  if (!PKCS7_type_is_signed(p7.get())) return Status::Error(EBADMSG, "root hash signature is not PKCS#7 signedData");
  if (!PKCS7_get_detached(p7.get()))
    return Status::Error(EBADMSG, "root hash signature is not detached (it carries its own content)");
  PKCS7* inner = p7->d.sign ? p7->d.sign->contents : nullptr;
  if (!inner || OBJ_obj2nid(inner->type) != NID_pkcs7_data)
    return Status::Error(EBADMSG, "root hash signature's content type is not pkcs7-data");
  if (sk_PKCS7_SIGNER_INFO_num(PKCS7_get_signer_info(p7.get())) < 1)
    return Status::Error(EBADMSG, "root hash signature has no signer");
  bool explicit_paths = !cert_paths.empty();
  std::vector<std::string> paths = cert_paths;
  if (paths.empty()) paths = sig_policy().cert_paths;
  if (paths.empty()) paths = default_cert_paths();
  else explicit_paths = true;
  UDM_ASSIGN_OR_RETURN(CertStack certs, load_certs(paths, explicit_paths));
  std::unique_ptr<BIO, decltype(&BIO_free)> data(BIO_new_mem_buf(root_hex.data(), static_cast<int>(root_hex.size())),
                                                BIO_free);
  if (!data) return Status::Error(ENOMEM, "BIO_new_mem_buf failed");
  int ok = PKCS7_verify(p7.get(), certs.get(), nullptr, data.get(), nullptr,
                        PKCS7_NOINTERN | PKCS7_NOVERIFY | PKCS7_BINARY);
  if (ok != 1) {
    std::string e = openssl_error();
    return Status::Error(EKEYREJECTED, "root hash signature rejected: " + e);
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> read_user_key(const std::string& desc) {
  long id = syscall(SYS_request_key, "user", desc.c_str(), nullptr, 0);
  if (id < 0) id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", desc.c_str(), 0);
  if (id < 0) {
    int e = errno;
    return Status::Error(ENOKEY, fmt::format("no user key '{}' in the keyrings: {}", desc, strerror(e)));
  }
  std::vector<uint8_t> buf(4096);
  for (int tries = 0; tries < 4; tries++) {
    long n = syscall(SYS_keyctl, KEYCTL_READ, id, buf.data(), buf.size());
    if (n < 0) return Status::Error(ENOKEY, fmt::format("reading user key '{}': {}", desc, strerror(errno)));
    if (static_cast<size_t>(n) <= buf.size()) {
      buf.resize(n);
      return buf;
    }
    buf.resize(n);
  }
  return Status::Error(ENOKEY, fmt::format("user key '{}' keeps changing size", desc));
}

}  // namespace udm::verity
