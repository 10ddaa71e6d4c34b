// OCI images on a registry: references, the manifest/index parser (fuzzed by
// fuzz/remote/fuzz_manifest), and the distribution API calls behind
// `udm push` and `udm pull` (docs/remote.md).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "remote/auth.h"
#include "remote/http_client.h"
#include "util/status.h"

namespace udm::remote {

inline constexpr const char* kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr const char* kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* kUpdateDiffArtifact = "application/vnd.udm.update-diff.v1";
// overlaybd's layer annotations (accelerated-container-image pkg/label).
inline constexpr const char* kObdDigest = "containerd.io/snapshot/overlaybd/blob-digest";
inline constexpr const char* kObdSize = "containerd.io/snapshot/overlaybd/blob-size";

// [oci://]HOST[:PORT]/REPO[:TAG|@sha256:HEX]
struct ImageRef {
  std::string authority, repo, tag, digest;  // digest "sha256:HEX" or empty; tag default "latest"
  bool plain_http = false;
  std::string base() const;  // scheme://authority/v2/repo
  std::string reference() const { return digest.empty() ? tag : digest; }
};
Result<ImageRef> parse_image_ref(const std::string& s);

struct Descriptor {
  std::string media_type, digest;
  uint64_t size = 0;
  std::map<std::string, std::string> annotations;
  std::string os, arch;  // platform (index entries)
};

struct Manifest {
  bool is_index = false;
  std::string media_type, artifact_type;
  Descriptor config;
  std::vector<Descriptor> layers;     // manifest
  std::vector<Descriptor> manifests;  // index
};
// Strict: schemaVersion 2, digests sha256:64-hex, sizes integers ≥ 0 (< 2^53),
// media types strings; what names the source in messages.
Result<Manifest> parse_manifest(const std::string& text, const std::string& content_type, const std::string& what);

// A registry session for one repository (auth, retries on 401).
class RegistryClient {
 public:
  RegistryClient(ImageRef ref, std::string actions);
  // A request to base()+path (or an absolute URL), answering the auth challenge once.
  Result<HttpReply> call(HttpRequest rq, const std::string& path_or_url);
  bool blob_exists(const std::string& digest, uint64_t* size = nullptr);
  // Uploads the file as a blob (skipped if present); chunked above chunk bytes.
  // Returns its digest "sha256:HEX". uploaded: false if it was already there.
  Result<std::string> push_blob_file(const std::string& path, uint64_t chunk, bool* uploaded);
  Result<std::string> push_blob_bytes(const std::string& data);
  // PUT manifest; returns the registry's digest (Docker-Content-Digest, checked against ours).
  Result<std::string> put_manifest(const std::string& ref, const std::string& body, const std::string& media_type);
  // GET manifest (Accept: every manifest and index type); body and content type.
  Result<std::pair<std::string, std::string>> get_manifest(const std::string& ref);
  const ImageRef& ref() const { return ref_; }

 private:
  ImageRef ref_;
  std::shared_ptr<RegistryAuth> auth_;
};

// Resolves ref to the layers of one image (index → linux/amd64 or the only
// manifest → layers), digests checked. The manifest's digest in *digest.
Result<Manifest> resolve_image(RegistryClient& c, std::string* digest);

std::string sha256_file_hex(const std::string& path, Status* st);

}  // namespace udm::remote
