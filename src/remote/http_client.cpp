#include "remote/http_client.h"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "remote/config.h"

namespace udm::remote {

namespace {
struct Transfer {
  const HttpRequest* req = nullptr;
  HttpReply reply;
  CURL* easy = nullptr;
  curl_slist* hdrs = nullptr;
  char errbuf[CURL_ERROR_SIZE] = {};
  size_t upload_pos = 0;
  bool done = false;
  std::mutex* mu = nullptr;
  std::condition_variable cv;
};

size_t header_cb(char* p, size_t sz, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  std::string_view line(p, sz * n);
  if (line.rfind("HTTP/", 0) == 0) {
    t->reply.headers.clear();  // a new response (after 100-continue or a redirect)
    return sz * n;
  }
  size_t c = line.find(':');
  if (c == std::string_view::npos) return sz * n;
  std::string name(line.substr(0, c));
  for (auto& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  std::string_view v = line.substr(c + 1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
  t->reply.headers[name] = std::string(v);
  return sz * n;
}

size_t write_cb(char* p, size_t sz, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = sz * n;
  long code = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
  size_t cap = t->req->max_body;
  if (t->req->has_range && code != 206) cap = std::min(cap, t->req->max_error_body);
  if (t->reply.body.size() + len > cap) {
    t->reply.overflow = true;
    return 0;  // abort: CURLE_WRITE_ERROR
  }
  t->reply.body.insert(t->reply.body.end(), p, p + len);
  return len;
}

size_t read_cb(char* p, size_t sz, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t left = t->req->body.size() - t->upload_pos;
  size_t k = std::min(left, sz * n);
  std::memcpy(p, t->req->body.data() + t->upload_pos, k);
  t->upload_pos += k;
  return k;
}
}  // namespace

struct HttpClient::Impl {
  std::mutex mu;
  std::deque<Transfer*> queue;
  bool stop = false;
  CURLM* multi = nullptr;
  std::thread th;

  void run() {
    std::vector<Transfer*> active;
    for (;;) {
      {
        std::lock_guard lk(mu);
        if (stop && queue.empty() && active.empty()) break;
        while (!queue.empty()) {
          Transfer* t = queue.front();
          queue.pop_front();
          curl_multi_add_handle(multi, t->easy);
          active.push_back(t);
        }
      }
      int running = 0;
      curl_multi_perform(multi, &running);
      int left = 0;
      while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
        if (m->msg != CURLMSG_DONE) continue;
        Transfer* t = nullptr;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
        finish(t, m->data.result);
        active.erase(std::find(active.begin(), active.end(), t));
      }
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
  }

  void finish(Transfer* t, CURLcode rc) {
    t->reply.curl_code = int(rc);
    if (rc != CURLE_OK) t->reply.curl_error = t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->reply.status);
    long v = 0;
    curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &v);
    t->reply.http_version = v;
    char* eff = nullptr;
    curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &eff);
    if (eff) t->reply.effective_url = eff;
    curl_multi_remove_handle(multi, t->easy);
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->hdrs);
    t->easy = nullptr;
    // Notify under the lock: the waiter owns `t` (on its stack) and destroys
    // it, condition variable included, as soon as it sees `done` - a
    // notify after unlocking could touch a destroyed condition variable
    // (ThreadSanitizer saw exactly that).
    std::lock_guard lk(*t->mu);
    t->done = true;
    t->cv.notify_all();
  }
};

HttpClient& HttpClient::shared() {
  static HttpClient* c = new HttpClient();  // never destroyed: devices may outlive static destructors
  return *c;
}

HttpClient::HttpClient() : impl_(std::make_unique<Impl>()) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  impl_->multi = curl_multi_init();
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
  curl_multi_setopt(impl_->multi, CURLMOPT_PIPELINING, long(CURLPIPE_MULTIPLEX));
  impl_->th = std::thread([this] { impl_->run(); });
}

HttpClient::~HttpClient() {
  {
    std::lock_guard lk(impl_->mu);
    impl_->stop = true;
  }
  curl_multi_wakeup(impl_->multi);
  impl_->th.join();
  curl_multi_cleanup(impl_->multi);
}

HttpReply HttpClient::perform(const HttpRequest& req) {
  RemoteConfig cfg = config();
  std::mutex mu;
  Transfer t;
  t.req = &req;
  t.mu = &mu;
  CURL* e = curl_easy_init();
  if (!e) {
    t.reply.curl_code = CURLE_OUT_OF_MEMORY;
    t.reply.curl_error = "curl_easy_init failed";
    return t.reply;
  }
  t.easy = e;
  curl_easy_setopt(e, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.errbuf);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);  // redirects are followed by the caller (auth must not leak)
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, long(cfg.connect_seconds));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, long(cfg.stall_seconds));
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, long(CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(e, CURLOPT_USERAGENT, "udm/0.1");
  if (!cfg.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, cfg.ca_file.c_str());
  curl_slist* resolve = nullptr;  // --remote-resolve: HOST:PORT:ADDR (the name still verified by TLS)
  for (const auto& r : cfg.resolve) resolve = curl_slist_append(resolve, r.c_str());
  if (resolve) curl_easy_setopt(e, CURLOPT_RESOLVE, resolve);
  if (!req.basic_user.empty()) {
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, long(CURLAUTH_BASIC));
    curl_easy_setopt(e, CURLOPT_USERNAME, req.basic_user.c_str());
    curl_easy_setopt(e, CURLOPT_PASSWORD, req.basic_password.c_str());
  }
  std::string range;
  if (req.has_range) {
    range = fmt::format("{}-{}", req.range_first, req.range_last);
    curl_easy_setopt(e, CURLOPT_RANGE, range.c_str());
  }
  for (const auto& h : req.headers) t.hdrs = curl_slist_append(t.hdrs, h.c_str());
  if (req.method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (req.method == "PUT" || req.method == "PATCH" || req.method == "POST") {
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(e, CURLOPT_READDATA, &t);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, curl_off_t(req.body.size()));
    if (req.method != "PUT") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    t.hdrs = curl_slist_append(t.hdrs, "Expect:");  // no 100-continue round trip
  } else if (req.method != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  if (t.hdrs) curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.hdrs);
  {
    std::lock_guard lk(impl_->mu);
    impl_->queue.push_back(&t);
  }
  curl_multi_wakeup(impl_->multi);
  std::unique_lock lk(mu);
  t.cv.wait(lk, [&] { return t.done; });
  if (resolve) curl_slist_free_all(resolve);
  return std::move(t.reply);
}

std::string HttpReply::describe() const {
  if (curl_code != 0) return fmt::format("curl: {} ({})", curl_error, curl_code);
  return fmt::format("HTTP {}", status);
}

bool HttpReply::tls_verify_failed() const {
  switch (curl_code) {
    case CURLE_PEER_FAILED_VERIFICATION:  // untrusted issuer, name mismatch, expired (60; was CURLE_SSL_CACERT)
    case CURLE_SSL_CACERT_BADFILE:        // the --remote-ca file cannot be read or parsed (77)
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
      return true;
    default:
      return false;
  }
}

std::string HttpReply::version_name() const {
  switch (http_version) {
    case CURL_HTTP_VERSION_1_0: return "1.0";
    case CURL_HTTP_VERSION_1_1: return "1.1";
    case CURL_HTTP_VERSION_2_0: return "2";
    case CURL_HTTP_VERSION_3: return "3";
    default: return "";
  }
}

std::string resolve_url(const std::string& base, const std::string& location) {
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, base.c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, location.c_str(), 0) == CURLUE_OK) {
    char* s = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK) {
      out = s;
      curl_free(s);
    }
  }
  curl_url_cleanup(u);
  return out;
}

std::string url_authority(const std::string& url) {
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char* h = nullptr;
    char* p = nullptr;
    if (curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK) out = h;
    if (curl_url_get(u, CURLUPART_PORT, &p, CURLU_DEFAULT_PORT) == CURLUE_OK) out += std::string(":") + p;
    curl_free(h);
    curl_free(p);
  }
  curl_url_cleanup(u);
  for (auto& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace udm::remote
