#include "update/diff_output.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "io/file_device.h"

namespace udm::update {

Status DiffOutput::begin() {
  if (f_.size() == 0) return Status::Ok();
  std::vector<uint8_t> zeros(header_bytes_, 0);
  UDM_TRY(f_.pwrite(0, zeros));
  return f_.sync();
}

Status DiffOutput::append(std::span<const uint8_t> bytes) {
  UDM_TRY(f_.pwrite(pos_, bytes));
  pos_ += bytes.size();
  return Status::Ok();
}

Status DiffOutput::finish(std::span<const uint8_t> header) {
  UDM_TRY(f_.sync());  // the body first ...
  UDM_TRY(f_.pwrite(0, header));
  return f_.sync();  // ... then the header that makes it a diff
}

namespace {

// A block device holding the diff: written in place, never grown.
class DeviceGrowFile : public GrowFile {
 public:
  explicit DeviceGrowFile(DevicePtr dev) : dev_(std::move(dev)) {}
  uint64_t size() const override { return dev_->size(); }
  Status pread(uint64_t off, std::span<uint8_t> buf) override {
    std::fill(buf.begin(), buf.end(), 0);
    if (off >= dev_->size()) return Status::Ok();
    return dev_->read(off, buf.first(std::min<uint64_t>(buf.size(), dev_->size() - off)));
  }
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override {
    if (off > dev_->size() || buf.size() > dev_->size() - off) return Status::Error(ENOSPC, "device full");
    return dev_->write(off, buf);
  }
  Status sync() override { return dev_->flush(); }

 private:
  DevicePtr dev_;
};

// Errors in update-diff's words, naming the path.
class NamedGrowFile : public GrowFile {
 public:
  NamedGrowFile(GrowFilePtr f, std::string path) : f_(std::move(f)), path_(std::move(path)) {}
  uint64_t size() const override { return f_->size(); }
  Status pread(uint64_t off, std::span<uint8_t> buf) override { return name(f_->pread(off, buf), "read"); }
  Status pwrite(uint64_t off, std::span<const uint8_t> buf) override { return name(f_->pwrite(off, buf), "write"); }
  Status sync() override { return name(f_->sync(), "fsync"); }

 private:
  Status name(Status s, const char* what) const { return s.ok() ? s : ErrnoStatus(std::string(what) + " " + path_, s.code()); }
  GrowFilePtr f_;
  std::string path_;
};

}  // namespace

Result<GrowFilePtr> open_diff_output(const std::string& path) {
  auto fail = [&](const Status& s) { return ErrnoStatus("create " + path, s.code()); };
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
    auto dev = FileDevice::open(path);
    if (!dev.ok()) return fail(dev.status());
    return GrowFilePtr(std::make_shared<NamedGrowFile>(std::make_shared<DeviceGrowFile>(*dev), path));
  }
  auto f = open_grow_file(path, /*writable=*/true, /*create=*/true);
  if (!f.ok() && f.status().code() == EEXIST) {
    // An existing file is replaced by the diff: emptied, then written.
    std::error_code ec;
    std::filesystem::resize_file(path, 0, ec);
    if (ec) return ErrnoStatus("create " + path, ec.value());
    f = open_grow_file(path, /*writable=*/true);
  }
  if (!f.ok()) return fail(f.status());
  return GrowFilePtr(std::make_shared<NamedGrowFile>(*f, path));
}

}  // namespace udm::update
