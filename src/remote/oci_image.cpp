#include "remote/oci_image.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "remote/cache_store.h"
#include "remote/config.h"
#include "remote/http_device.h"

namespace udm::remote {
namespace {

bool valid_digest(const std::string& d) {
  if (d.size() != 71 || d.rfind("sha256:", 0) != 0) return false;
  for (size_t i = 7; i < d.size(); i++)
    if (!std::isxdigit(static_cast<unsigned char>(d[i])) || std::isupper(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

bool valid_repo(const std::string& r) {
  if (r.empty() || r.front() == '/' || r.back() == '/' || r.size() > 255) return false;
  for (char c : r)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '.' ||
          c == '_' || c == '-' || c == '/'))
      return false;
  return true;
}

std::string sha256_str(const std::string& s) {
  return "sha256:" + sha256_hex(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

Result<Descriptor> parse_descriptor(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) return Invalid(what + ": descriptor is not an object");
  Descriptor d;
  auto mt = j.find("mediaType");
  if (mt == j.end() || !mt->is_string()) return Invalid(what + ": descriptor without a mediaType string");
  d.media_type = mt->get<std::string>();
  auto dg = j.find("digest");
  if (dg == j.end() || !dg->is_string() || !valid_digest(dg->get<std::string>()))
    return Invalid(what + ": descriptor digest must be sha256:<64 lowercase hex>");
  d.digest = dg->get<std::string>();
  auto sz = j.find("size");
  if (sz == j.end() || !sz->is_number_integer() || sz->get<int64_t>() < 0 || sz->get<int64_t>() > (int64_t(1) << 53))
    return Invalid(what + ": descriptor size must be a non-negative integer");
  d.size = uint64_t(sz->get<int64_t>());
  if (auto a = j.find("annotations"); a != j.end()) {
    if (!a->is_object()) return Invalid(what + ": annotations must be an object");
    for (auto it = a->begin(); it != a->end(); ++it) {
      if (!it.value().is_string()) return Invalid(what + ": annotation " + it.key() + " is not a string");
      d.annotations[it.key()] = it.value().get<std::string>();
    }
  }
  if (auto p = j.find("platform"); p != j.end()) {
    if (!p->is_object()) return Invalid(what + ": platform must be an object");
    if (p->contains("os") && (*p)["os"].is_string()) d.os = (*p)["os"].get<std::string>();
    if (p->contains("architecture") && (*p)["architecture"].is_string()) d.arch = (*p)["architecture"].get<std::string>();
  }
  return d;
}

}  // namespace

std::string ImageRef::base() const {
  return fmt::format("{}://{}/v2/{}", plain_http ? "http" : "https", authority, repo);
}

Result<ImageRef> parse_image_ref(const std::string& in) {
  std::string s = in.rfind("oci://", 0) == 0 ? in.substr(6) : in;
  auto bad = [&](const std::string& why) {
    return Invalid("'" + in + "': " + why + " (want HOST[:PORT]/REPO[:TAG|@sha256:HEX])");
  };
  size_t slash = s.find('/');
  if (slash == std::string::npos || slash == 0) return bad("no registry host");
  ImageRef r;
  r.authority = s.substr(0, slash);
  for (auto& c : r.authority) c = char(std::tolower(static_cast<unsigned char>(c)));
  std::string rest = s.substr(slash + 1);
  if (auto at = rest.find('@'); at != std::string::npos) {
    r.digest = rest.substr(at + 1);
    rest = rest.substr(0, at);
    if (!valid_digest(r.digest)) return bad("digest must be sha256:<64 lowercase hex>");
  } else if (auto c = rest.rfind(':'); c != std::string::npos && rest.find('/', c) == std::string::npos) {
    r.tag = rest.substr(c + 1);
    rest = rest.substr(0, c);
    if (r.tag.empty() || r.tag.size() > 128) return bad("bad tag");
    for (char ch : r.tag)
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '.' && ch != '-') return bad("bad tag");
  }
  if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
  r.repo = rest;
  if (!valid_repo(r.repo)) return bad("bad repository name (lowercase letters, digits, . _ - /)");
  auto cfg = config();
  r.plain_http = is_loopback_host(r.authority) ||
                 std::find(cfg.insecure_registries.begin(), cfg.insecure_registries.end(), r.authority) !=
                     cfg.insecure_registries.end();
  return r;
}

Result<Manifest> parse_manifest(const std::string& text, const std::string& content_type, const std::string& what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Invalid(what + ": manifest is not a JSON object");
  auto sv = j.find("schemaVersion");
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int64_t>() != 2)
    return Invalid(what + ": schemaVersion must be 2");
  Manifest m;
  m.media_type = content_type;
  if (auto mt = j.find("mediaType"); mt != j.end()) {
    if (!mt->is_string()) return Invalid(what + ": mediaType must be a string");
    m.media_type = mt->get<std::string>();
  }
  if (auto at = j.find("artifactType"); at != j.end() && at->is_string()) m.artifact_type = at->get<std::string>();
  bool has_manifests = j.contains("manifests");
  m.is_index = m.media_type == kOciIndex || m.media_type == kDockerList || (m.media_type.empty() && has_manifests);
  if (m.is_index) {
    auto ms = j.find("manifests");
    if (ms == j.end() || !ms->is_array()) return Invalid(what + ": index without a manifests array");
    if (ms->size() > 4096) return Invalid(what + ": index lists too many manifests");
    for (size_t i = 0; i < ms->size(); i++) {
      auto d = parse_descriptor((*ms)[i], fmt::format("{}: manifests[{}]", what, i));
      if (!d.ok()) return d.status();
      m.manifests.push_back(*d);
    }
    return m;
  }
  if (!m.media_type.empty() && m.media_type != kOciManifest && m.media_type != kDockerManifest)
    return Invalid(what + ": unsupported manifest type '" + m.media_type + "'");
  auto c = j.find("config");
  if (c == j.end()) return Invalid(what + ": manifest without config");
  auto cd = parse_descriptor(*c, what + ": config");
  if (!cd.ok()) return cd.status();
  m.config = *cd;
  auto ls = j.find("layers");
  if (ls == j.end() || !ls->is_array()) return Invalid(what + ": manifest without a layers array");
  if (ls->size() > 4096) return Invalid(what + ": too many layers");
  for (size_t i = 0; i < ls->size(); i++) {
    auto d = parse_descriptor((*ls)[i], fmt::format("{}: layers[{}]", what, i));
    if (!d.ok()) return d.status();
    m.layers.push_back(*d);
  }
  return m;
}

std::string sha256_file_hex(const std::string& path, Status* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *st = ErrnoStatus("open " + path);
    return "";
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) EVP_DigestUpdate(ctx, buf.data(), size_t(n));
  if (n < 0) *st = ErrnoStatus("read " + path);
  ::close(fd);
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static const char* hx = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; i++) {
    s.push_back(hx[md[i] >> 4]);
    s.push_back(hx[md[i] & 15]);
  }
  return s;
}

RegistryClient::RegistryClient(ImageRef ref, std::string actions) : ref_(std::move(ref)) {
  auto creds = load_credentials(ref_.authority);
  auth_ = std::make_shared<RegistryAuth>(ref_.authority, ref_.repo, creds.ok() ? *creds : std::nullopt, actions);
}

Result<HttpReply> RegistryClient::call(HttpRequest rq, const std::string& path_or_url) {
  rq.url = path_or_url.rfind("http", 0) == 0 ? path_or_url : ref_.base() + path_or_url;
  bool same = url_authority(rq.url) == url_authority(ref_.base());
  for (int attempt = 0; attempt < 4; attempt++) {
    HttpRequest r = rq;
    if (same) {
      std::string h = auth_->header();
      if (!h.empty()) r.headers.push_back(h);
    }
    HttpReply rep = HttpClient::shared().perform(r);
    if (!rep.transport_ok()) {
      if (attempt < 2 && rq.method != "POST") continue;  // reset connection: GET/HEAD/PUT/PATCH of a chunk again
      return IoError(rq.method + " " + rq.url + ": " + rep.describe());
    }
    if (rep.status == 401 && same && attempt == 0) {
      UDM_TRY(auth_->on_unauthorized(rep.headers, rq.url));
      continue;
    }
    return rep;
  }
  return IoError(rq.method + " " + rq.url + ": no answer");
}

bool RegistryClient::blob_exists(const std::string& digest, uint64_t* size) {
  HttpRequest rq;
  rq.method = "HEAD";
  auto r = call(rq, "/blobs/" + digest);
  if (!r.ok() || r->status != 200) return false;
  if (size && r->headers.count("content-length")) *size = std::stoull("0" + r->headers["content-length"]);
  return true;
}

static std::string error_text(const HttpReply& r) {
  std::string b(r.body.begin(), r.body.begin() + long(std::min<size_t>(r.body.size(), 300)));
  while (!b.empty() && (b.back() == '\n' || b.back() == '\r')) b.pop_back();
  return r.describe() + (b.empty() ? "" : ": " + b);
}

Result<std::string> RegistryClient::push_blob_file(const std::string& path, uint64_t chunk, bool* uploaded) {
  Status st;
  std::string hex = sha256_file_hex(path, &st);
  UDM_TRY(st);
  std::string digest = "sha256:" + hex;
  *uploaded = false;
  if (blob_exists(digest)) return digest;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  uint64_t size = uint64_t(::lseek(fd, 0, SEEK_END));
  HttpRequest post;
  post.method = "POST";
  auto r = call(post, "/blobs/uploads/");
  if (!r.ok()) return r.status();
  if (r->status != 202 || !r->headers.count("location"))
    return IoError("start upload of " + path + " to " + ref_.base() + ": " + error_text(*r));
  std::string loc = resolve_url(ref_.base(), r->headers["location"]);
  auto read_at = [&](uint64_t off, uint64_t n, std::vector<uint8_t>& buf) -> Status {
    buf.resize(n);
    if (::pread(fd, buf.data(), n, off_t(off)) != ssize_t(n)) return ErrnoStatus("read " + path);
    return Status::Ok();
  };
  std::vector<uint8_t> buf;
  uint64_t off = 0;
  if (size > chunk) {
    // Chunked: PATCH with Content-Range, always following the newest Location,
    // tracking the offset ourselves (registry 2.8.2 ignores Content-Range);
    // after a failed chunk, ask the upload's status and resume from its Range.
    int failures = 0;
    while (off < size) {
      uint64_t n = std::min(chunk, size - off);
      UDM_TRY(read_at(off, n, buf));
      HttpRequest p;
      p.method = "PATCH";
      p.body = buf;
      p.headers = {"Content-Type: application/octet-stream", fmt::format("Content-Range: {}-{}", off, off + n - 1)};
      auto pr = call(p, loc);
      if (pr.ok() && pr->status == 202) {
        if (pr->headers.count("location")) loc = resolve_url(loc, pr->headers["location"]);
        off += n;
        continue;
      }
      if (++failures > 3)
        return IoError(fmt::format("upload of {} at offset {}: {}", path, off,
                                   pr.ok() ? error_text(*pr) : pr.status().message()));
      HttpRequest g;
      auto gr = call(g, loc);
      if (!gr.ok() || gr->status != 204 || !gr->headers.count("range"))
        return IoError(fmt::format("upload of {} at offset {}: cannot resume (status {})", path, off,
                                   gr.ok() ? error_text(*gr) : gr.status().message()));
      std::string range = gr->headers["range"];
      off = std::stoull("0" + range.substr(range.find('-') + 1)) + 1;
      if (range == "0-0") off = 0;
      if (gr->headers.count("location")) loc = resolve_url(loc, gr->headers["location"]);
    }
    buf.clear();
  } else {
    UDM_TRY(read_at(0, size, buf));
  }
  HttpRequest put;
  put.method = "PUT";
  put.body = buf;
  put.headers = {"Content-Type: application/octet-stream"};
  auto pr = call(put, loc + (loc.find('?') == std::string::npos ? "?" : "&") + "digest=" + digest);
  if (!pr.ok()) return pr.status();
  if (pr->status != 201) return IoError("finish upload of " + path + ": " + error_text(*pr));
  *uploaded = true;
  return digest;
}

Result<std::string> RegistryClient::push_blob_bytes(const std::string& data) {
  std::string digest = sha256_str(data);
  if (blob_exists(digest)) return digest;
  HttpRequest post;
  post.method = "POST";
  auto r = call(post, "/blobs/uploads/");
  if (!r.ok()) return r.status();
  if (r->status != 202 || !r->headers.count("location")) return IoError("start upload to " + ref_.base() + ": " + error_text(*r));
  std::string loc = resolve_url(ref_.base(), r->headers["location"]);
  HttpRequest put;
  put.method = "PUT";
  put.body = std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  put.headers = {"Content-Type: application/octet-stream"};
  auto pr = call(put, loc + (loc.find('?') == std::string::npos ? "?" : "&") + "digest=" + digest);
  if (!pr.ok()) return pr.status();
  if (pr->status != 201) return IoError("upload of config blob: " + error_text(*pr));
  return digest;
}

Result<std::string> RegistryClient::put_manifest(const std::string& ref, const std::string& body,
                                                 const std::string& media_type) {
  HttpRequest put;
  put.method = "PUT";
  put.body = std::span(reinterpret_cast<const uint8_t*>(body.data()), body.size());
  put.headers = {"Content-Type: " + media_type};
  auto r = call(put, "/manifests/" + ref);
  if (!r.ok()) return r.status();
  if (r->status != 201) return IoError("push manifest " + ref_.base() + "/manifests/" + ref + ": " + error_text(*r));
  std::string ours = sha256_str(body);
  if (r->headers.count("docker-content-digest") && r->headers["docker-content-digest"] != ours)
    return IoError("registry says the manifest's digest is " + r->headers["docker-content-digest"] + ", not " + ours);
  return ours;
}

Result<std::pair<std::string, std::string>> RegistryClient::get_manifest(const std::string& ref) {
  HttpRequest g;
  g.headers = {std::string("Accept: ") + kOciIndex + ", " + kOciManifest + ", " + kDockerList + ", " + kDockerManifest};
  g.max_body = 4 << 20;
  std::string url = ref_.base() + "/manifests/" + ref;
  auto r = call(g, "/manifests/" + ref);
  if (!r.ok()) return r.status();
  if (r->overflow) return IoError(url + ": manifest larger than 4 MiB");
  if (r->status == 404) return Status::Error(ENOENT, url + ": " + error_text(*r));
  if (r->status != 200) return IoError(url + ": " + error_text(*r));
  std::string body(r->body.begin(), r->body.end());
  std::string ct = r->headers.count("content-type") ? r->headers["content-type"] : "";
  if (auto sc = ct.find(';'); sc != std::string::npos) ct = ct.substr(0, sc);
  if (ref.rfind("sha256:", 0) == 0 && sha256_str(body) != ref)
    return IoError(url + ": manifest bytes do not match their digest (got " + sha256_str(body) + ")");
  return std::make_pair(body, ct);
}

Result<Manifest> resolve_image(RegistryClient& c, std::string* digest) {
  std::string what = c.ref().base() + "/manifests/" + c.ref().reference();
  auto m = c.get_manifest(c.ref().reference());
  if (!m.ok()) return m.status();
  auto parsed = parse_manifest(m->first, m->second, what);
  if (!parsed.ok()) return parsed.status();
  *digest = "sha256:" + sha256_hex(std::span(reinterpret_cast<const uint8_t*>(m->first.data()), m->first.size()));
  if (!parsed->is_index) return parsed;
  if (parsed->manifests.empty()) return Invalid(what + ": empty index");
  const Descriptor* pick = nullptr;
  for (auto& d : parsed->manifests)
    if (d.os == "linux" && d.arch == "amd64" && !pick) pick = &d;
  if (!pick) pick = &parsed->manifests.front();
  auto m2 = c.get_manifest(pick->digest);
  if (!m2.ok()) return m2.status();
  auto p2 = parse_manifest(m2->first, m2->second, c.ref().base() + "/manifests/" + pick->digest);
  if (!p2.ok()) return p2.status();
  if (p2->is_index) return Invalid(what + ": index points at another index");
  *digest = pick->digest;
  return p2;
}

}  // namespace udm::remote
