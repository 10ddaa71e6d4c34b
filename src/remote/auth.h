// Registry credentials and the distribution API's auth flow: a 401 with
// `WWW-Authenticate: Bearer realm,service,scope` => GET realm?service&scope
// (Basic credentials if the auths file has some) => token, cached until
// shortly before `expires_in` and fetched again on the next 401; a `Basic`
// challenge => the credentials themselves. Credentials come from a docker
// config.json ({"auths": {"host[:port]": {"auth": base64(user:pw)} or
// {"username","password"}}}).
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "remote/http_check.h"
#include "util/status.h"

namespace udm::remote {

struct Credentials {
  std::string user, password;
};
// Parses config.json text; credentials for authority (host[:port]) or nullopt.
Result<std::optional<Credentials>> find_credentials(const std::string& json_text, const std::string& authority);
// The configured file's credentials for authority (no file: nullopt).
Result<std::optional<Credentials>> load_credentials(const std::string& authority);

class RegistryAuth {
 public:
  RegistryAuth(std::string authority, std::string repo, std::optional<Credentials> creds, std::string scope_actions = "pull");
  // The Authorization header to send now ("" if none is known yet).
  std::string header();
  // After a 401 carrying h: obtain a (new) token or use Basic. Error if the
  // challenge cannot be answered (no credentials, token server refused).
  Status on_unauthorized(const Headers& h, const std::string& url);
  uint64_t token_fetches() const;

 private:
  Status fetch_token_locked(const Challenge& c, const std::string& url);
  std::string authority_, repo_, actions_;
  std::optional<Credentials> creds_;
  mutable std::mutex mu_;
  std::string header_;
  std::optional<Challenge> bearer_;
  std::chrono::steady_clock::time_point renew_at_{};
  uint64_t fetches_ = 0;
};

std::string base64_encode(const std::string& s);
std::optional<std::string> base64_decode(const std::string& s);

}  // namespace udm::remote
