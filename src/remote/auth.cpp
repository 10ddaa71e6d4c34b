#include "remote/auth.h"

#include <curl/curl.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "remote/config.h"
#include "remote/http_client.h"

namespace udm::remote {

std::string base64_encode(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()), int(s.size()));
  out.resize(size_t(n));
  return out;
}

std::optional<std::string> base64_decode(const std::string& in) {
  std::string s;
  for (char c : in)
    if (c != '\n' && c != '\r' && c != ' ') s.push_back(c);
  if (s.empty() || s.size() % 4) return std::nullopt;
  std::string out(3 * s.size() / 4 + 1, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()), int(s.size()));
  if (n < 0) return std::nullopt;
  size_t pad = 0;
  if (s.back() == '=') pad++;
  if (s.size() > 1 && s[s.size() - 2] == '=') pad++;
  out.resize(size_t(n) - pad);
  return out;
}

Result<std::optional<Credentials>> find_credentials(const std::string& text, const std::string& authority) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Invalid("registry auth file is not JSON");
  auto a = j.find("auths");
  if (a == j.end()) return std::optional<Credentials>();
  if (!a->is_object()) return Invalid("registry auth file: \"auths\" is not an object");
  for (auto it = a->begin(); it != a->end(); ++it) {
    std::string k = it.key();
    if (auto p = k.find("://"); p != std::string::npos) k = k.substr(p + 3);
    if (auto p = k.find('/'); p != std::string::npos) k = k.substr(0, p);
    if (k != authority) continue;
    const auto& e = it.value();
    if (!e.is_object()) return Invalid("registry auth file: entry for " + k + " is not an object");
    Credentials c;
    if (e.contains("auth") && e["auth"].is_string()) {
      auto d = base64_decode(e["auth"].get<std::string>());
      if (!d || d->find(':') == std::string::npos)
        return Invalid("registry auth file: \"auth\" of " + k + " is not base64 of user:password");
      c.user = d->substr(0, d->find(':'));
      c.password = d->substr(d->find(':') + 1);
      return std::optional<Credentials>(c);
    }
    if (e.contains("username") && e["username"].is_string() && e.contains("password") && e["password"].is_string()) {
      c.user = e["username"].get<std::string>();
      c.password = e["password"].get<std::string>();
      return std::optional<Credentials>(c);
    }
    return Invalid("registry auth file: entry for " + k + " has neither auth nor username/password");
  }
  return std::optional<Credentials>();
}

Result<std::optional<Credentials>> load_credentials(const std::string& authority) {
  std::string path = config().registry_auth;
  if (path.empty()) return std::optional<Credentials>();
  std::ifstream f(path);
  if (!f) return Status::Error(ENOENT, "--registry-auth " + path + ": cannot read");
  std::stringstream ss;
  ss << f.rdbuf();
  auto r = find_credentials(ss.str(), authority);
  if (!r.ok()) return r.status().context("--registry-auth " + path);
  return r;
}

RegistryAuth::RegistryAuth(std::string authority, std::string repo, std::optional<Credentials> creds,
                           std::string actions)
    : authority_(std::move(authority)), repo_(std::move(repo)), actions_(std::move(actions)), creds_(std::move(creds)) {}

std::string RegistryAuth::header() {
  std::lock_guard lk(mu_);
  // Proactive renewal: a token close to its expiry is fetched again first.
  if (bearer_ && std::chrono::steady_clock::now() >= renew_at_) {
    Status st = fetch_token_locked(*bearer_, "");
    if (!st.ok()) header_.clear();
  }
  return header_;
}

uint64_t RegistryAuth::token_fetches() const {
  std::lock_guard lk(mu_);
  return fetches_;
}

Status RegistryAuth::on_unauthorized(const Headers& h, const std::string& url) {
  auto it = h.find("www-authenticate");
  if (it == h.end()) return Status::Error(EACCES, url + ": 401 without a WWW-Authenticate challenge");
  auto c = parse_challenge(it->second);
  if (!c) return Status::Error(EACCES, url + ": malformed WWW-Authenticate '" + it->second + "'");
  std::lock_guard lk(mu_);
  if (c->scheme == "basic") {
    if (!creds_) return Status::Error(EACCES, url + ": registry wants Basic credentials; none for " + authority_ +
                                                  " in --registry-auth");
    std::string hdr = "Authorization: Basic " + base64_encode(creds_->user + ":" + creds_->password);
    if (hdr == header_) return Status::Error(EACCES, url + ": registry refused the credentials of " + authority_);
    header_ = hdr;
    return Status::Ok();
  }
  if (c->scheme != "bearer" || !c->params.count("realm"))
    return Status::Error(EACCES, url + ": unsupported challenge '" + it->second + "'");
  if (!c->params.count("scope")) c->params["scope"] = "repository:" + repo_ + ":" + actions_;
  bearer_ = *c;
  return fetch_token_locked(*c, url);
}

Status RegistryAuth::fetch_token_locked(const Challenge& c, const std::string& url) {
  std::string realm = c.params.at("realm");
  CURL* e = curl_easy_init();
  auto esc = [&](const std::string& s) {
    char* p = curl_easy_escape(e, s.c_str(), int(s.size()));
    std::string r = p ? p : "";
    curl_free(p);
    return r;
  };
  std::string q = realm + (realm.find('?') == std::string::npos ? "?" : "&");
  if (c.params.count("service")) q += "service=" + esc(c.params.at("service")) + "&";
  q += "scope=" + esc(c.params.count("scope") ? c.params.at("scope") : "repository:" + repo_ + ":" + actions_);
  curl_easy_cleanup(e);
  HttpRequest rq;
  rq.url = q;
  rq.max_body = 1 << 20;
  if (creds_) {
    rq.basic_user = creds_->user;
    rq.basic_password = creds_->password;
  }
  std::string what = "token server " + realm + (url.empty() ? "" : " (for " + url + ")");
  HttpReply r = HttpClient::shared().perform(rq);
  fetches_++;
  if (!r.transport_ok()) return Status::Error(EIO, what + ": " + r.describe());
  if (r.status == 401 || r.status == 403)
    return Status::Error(EACCES, what + ": refused the credentials" + (creds_ ? " of " + creds_->user : std::string(" (none given)")) +
                                     fmt::format(" (HTTP {})", r.status));
  if (r.status != 200) return Status::Error(EIO, what + ": " + r.describe());
  auto j = nlohmann::json::parse(r.body.begin(), r.body.end(), nullptr, false);
  std::string tok;
  if (j.is_object()) {
    if (j.contains("token") && j["token"].is_string()) tok = j["token"].get<std::string>();
    else if (j.contains("access_token") && j["access_token"].is_string()) tok = j["access_token"].get<std::string>();
  }
  if (tok.empty()) return Status::Error(EIO, what + ": reply has no token");
  int64_t ttl = 60;
  if (j.contains("expires_in") && j["expires_in"].is_number_integer()) ttl = std::max<int64_t>(1, j["expires_in"].get<int64_t>());
  // Renew at 80% of the lifetime (the registry also gets a 401 path).
  renew_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(ttl * 800);
  header_ = "Authorization: Bearer " + tok;
  return Status::Ok();
}

}  // namespace udm::remote
