// libcurl behind one I/O thread that owns one multi handle (connection and DNS
// caches shared by every transfer; HTTP/2 multiplexing when the server offers
// it over TLS; at most 8 connections per host). Callers block in perform()
// while the thread drives their transfer; many callers run in parallel.
// libcurl's rules (docs/remote.md): an easy handle is only ever touched by the
// I/O thread, NOSIGNAL on every handle, no shared connection cache across threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "remote/http_check.h"

namespace udm::remote {

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, PUT, POST, PATCH
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  // Inclusive byte range to ask for (Range: bytes=first-last).
  bool has_range = false;
  uint64_t range_first = 0, range_last = 0;
  // Body to send (PUT/POST/PATCH); the memory must outlive perform().
  std::span<const uint8_t> body;
  // The largest body kept; a longer one aborts the transfer (reply.overflow).
  size_t max_body = 64u << 20;
  // A ranged GET whose reply is not 206 keeps at most this much (error text).
  size_t max_error_body = 16u << 10;
  std::string basic_user, basic_password;  // CURLOPT_USERNAME/PASSWORD (not sent across hosts)
};

struct HttpReply {
  int curl_code = 0;        // CURLcode; 0 = transfer completed
  std::string curl_error;   // text of a failed transfer
  long status = 0;          // HTTP status (0 if none)
  Headers headers;          // of the final response, lowercase names
  std::vector<uint8_t> body;
  bool overflow = false;    // body longer than allowed: transfer aborted
  long http_version = 0;    // CURL_HTTP_VERSION_* of the final response
  std::string effective_url;
  bool transport_ok() const { return curl_code == 0; }
  // The server's certificate (or the CA file given) was refused: retrying
  // cannot help, and going on without verification is never done.
  bool tls_verify_failed() const;
  // "2", "1.1", "1.0", "3" or "" (none)
  std::string version_name() const;
  // "HTTP 503" or "curl: Connection refused (7)"
  std::string describe() const;
};

class HttpClient {
 public:
  // The process-wide client (created on first use).
  static HttpClient& shared();
  HttpClient();
  ~HttpClient();
  HttpReply perform(const HttpRequest& req);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// "https://h:p/a" + "/b?c" or absolute: the absolute URL (curl_url).
std::string resolve_url(const std::string& base, const std::string& location);
// "host[:port]" of a URL, lowercase; empty if unparsable.
std::string url_authority(const std::string& url);

}  // namespace udm::remote
