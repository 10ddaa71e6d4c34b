// What an integrator relies on besides the data path: the control socket's
// peer check, the daemon's exposure options as the binary takes them,
// `udm --version`, and manuals that cover every verb and target.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "common/sys_util.h"
#include "device/feature.h"

using namespace udm;
using namespace udm::test;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Verbs listed under "Subcommands:" in a --help text.
std::vector<std::string> verbs_in_help(const std::string& help) {
  std::vector<std::string> out;
  std::istringstream in(help);
  std::string line;
  bool in_list = false;
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_list = true;
      continue;
    }
    if (in_list && line.size() > 2 && line[0] == ' ' && line[1] == ' ' && line[2] != ' ') {
      out.push_back(line.substr(2, line.find(' ', 2) - 2));
    }
  }
  return out;
}

// A name as roff shows it (hyphens escaped).
std::string roff(std::string s) {
  std::string o;
  for (char c : s) o += c == '-' ? std::string("\\-") : std::string(1, c);
  return o;
}

// Runs argv as uid 65534 (nobody) with the given primary group and
// supplementary groups.
CmdResult run_as_nobody(const std::vector<std::string>& argv, unsigned gid, const std::string& groups = "") {
  std::vector<std::string> a = {"setpriv", "--reuid=65534", "--regid=" + std::to_string(gid)};
  if (groups.empty()) a.push_back("--clear-groups");
  else a.push_back("--groups=" + groups);
  a.insert(a.end(), argv.begin(), argv.end());
  return run(a);
}

}  // namespace

TEST(Deploy, VersionNamesReleaseAndRevision) {
  auto r = run({udm_bin(), "--version"});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(std::regex_match(r.out, std::regex(R"(udm \d+\.\d+\.\d+ \(git ([0-9a-f]{12}(-dirty)?|unknown)\)\n)")))
      << r.out;
  EXPECT_EQ(run({udm_bin(), "-V"}).out, r.out);
}

TEST(Deploy, ManualListsEveryVerbAndOption) {
  // build/man/udm.8 is written by the build from the binary's own parser.
  std::string bin = udm_bin();
  std::string page = slurp(bin.substr(0, bin.rfind('/')) + "/man/udm.8");
  ASSERT_FALSE(page.empty()) << "no man/udm.8 next to " << bin;
  auto verbs = verbs_in_help(run({bin, "--help"}).out);
  ASSERT_GT(verbs.size(), 10u);
  for (const auto& v : verbs) {
    auto sub = verbs_in_help(run({bin, v, "--help"}).out);
    if (sub.empty()) {
      EXPECT_NE(page.find(".SS \"udm " + roff(v) + "\""), std::string::npos) << "udm(8) lacks " << v;
    } else {
      for (const auto& s : sub)
        EXPECT_NE(page.find(".SS \"udm " + roff(v) + " " + roff(s) + "\""), std::string::npos) << "udm(8) lacks " << v << " " << s;
    }
  }
  // Options appear with roff-escaped dashes.
  for (auto opt : {"\\-\\-tls", "\\-\\-nbd\\-export", "\\-\\-control\\-group", "\\-\\-table"})
    EXPECT_NE(page.find(std::string(".B ") + opt), std::string::npos) << opt;
  EXPECT_EQ(page.find(".SS \"udm manpage\""), std::string::npos) << "the hidden verb is not documented";
}

TEST(Deploy, TargetsManualHasEveryTarget) {
  std::string page = slurp(source_dir() + "/dist/man/udm-targets.7");
  ASSERT_FALSE(page.empty());
  register_features();
  for (const auto& t : TargetRegistry::builtin().types())
    EXPECT_NE(page.find(".SS " + t + "\n"), std::string::npos) << "udm-targets(7) has no section for " << t;
}

class ControlAccess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!is_root() || !have_tool("setpriv")) GTEST_SKIP() << "needs root and setpriv";
    // nobody must be able to run the binary: a copy in a world-readable dir.
    chmod(tmp_.path().c_str(), 0755);
    bin_ = tmp_.file("udm");
    ASSERT_TRUE(run({"cp", udm_bin(), bin_}).ok());
    chmod(bin_.c_str(), 0755);
  }
  TempDir tmp_;
  std::string bin_;
};

TEST_F(ControlAccess, NonRootPeerRefusedEvenWhenTheSocketIsOpen) {
  auto d = TestDaemon::start(false, false);
  // Loosen the file-system permissions so that only the daemon's own check
  // stands between nobody and the verbs.
  chmod(d->dir.c_str(), 0755);
  chmod(d->socket.c_str(), 0666);
  auto r = run_as_nobody({bin_, "ls", "--socket", d->socket}, 65534);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("permission denied: uid 65534 is not root"), std::string::npos) << r.err;
  r = run_as_nobody({bin_, "create", "x", "--table", "0 8 zero", "--socket", d->socket}, 65534);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(d->udm({"ls"}).out, "") << "a refused peer created a device";
  EXPECT_TRUE(d->udm({"ls"}).ok());  // root still served
  EXPECT_EQ(d->stop(), 0);
}

TEST_F(ControlAccess, ControlGroupMembersAdmitted) {
  auto d = TestDaemon::start(false, false, {"--control-group", "4242"});
  struct stat st {};
  ASSERT_EQ(stat(d->socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_gid, 4242u);
  chmod(d->dir.c_str(), 0755);
  // Primary group, then supplementary group: admitted.
  auto r = run_as_nobody({bin_, "create", "g", "--table", "0 8 zero", "--socket", d->socket}, 4242);
  EXPECT_TRUE(r.ok()) << r.describe();
  r = run_as_nobody({bin_, "ls", "--socket", d->socket}, 65534, "4242");
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.out, "g\n");
  // Not a member: with the socket's mode loosened, the daemon refuses it.
  chmod(d->socket.c_str(), 0666);
  r = run_as_nobody({bin_, "ls", "--socket", d->socket}, 4243);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is not root and not in group 4242"), std::string::npos) << r.err;
  EXPECT_TRUE(d->udm({"remove", "g"}).ok());
  EXPECT_EQ(d->stop(), 0);
}

TEST(DeployDaemon, BadExposureOptionsAreUsageErrors) {
  TempDir tmp;
  auto sock = tmp.file("c"), nbd = tmp.file("n");
  auto r = run({udm_bin(), "daemon", "--socket", sock, "--nbd-unix", nbd, "--tls", "maybe"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("'maybe' is not one of off, on, require"), std::string::npos) << r.err;
  r = run({udm_bin(), "daemon", "--socket", sock, "--nbd-unix", nbd, "--nbd-export", "a/b"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not a device name"), std::string::npos) << r.err;
  r = run({udm_bin(), "daemon", "--socket", sock, "--nbd-unix", nbd, "--tls-psk", tmp.file("k")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--tls is off"), std::string::npos) << r.err;
  r = run({udm_bin(), "daemon", "--socket", sock, "--tls", "require"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("need an NBD listener"), std::string::npos) << r.err;
  // Credentials that cannot be loaded: the daemon does not start.
  r = run({udm_bin(), "daemon", "--socket", sock, "--nbd-unix", nbd, "--tls", "on", "--tls-certificates",
           tmp.path()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cannot read " + tmp.file("server-cert.pem")), std::string::npos) << r.err;
  EXPECT_NE(access(sock.c_str(), F_OK), 0) << "control socket left behind";
}

TEST(DeployDaemon, NbdExportAllowListAsTheDaemonTakesIt) {
  if (!have_tool("nbdinfo")) GTEST_SKIP() << "nbdinfo missing";
  auto d = TestDaemon::start(false, true, {"--nbd-export", "shown:ro"});
  TempDir tmp;
  auto f = tmp.file("f.img");
  make_sparse_file(f, 1 << 20);
  ASSERT_TRUE(d->udm({"create", "shown", "--table", "0 2048 linear " + f + " 0"}).ok());
  ASSERT_TRUE(d->udm({"create", "hidden", "--table", "0 2048 zero"}).ok());
  auto r = run({"nbdinfo", "--list", "nbd+unix://?socket=" + d->nbd_unix});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_NE(r.out.find("export=\"shown\""), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("hidden"), std::string::npos) << r.out;
  r = run({"nbdinfo", "--json", d->nbd_uri("shown")});
  EXPECT_NE(r.out.find("\"is_read_only\": true"), std::string::npos) << r.out;
  EXPECT_FALSE(run({"nbdinfo", d->nbd_uri("hidden")}).ok());
  EXPECT_TRUE(d->udm({"remove", "shown"}).ok());
  EXPECT_TRUE(d->udm({"remove", "hidden"}).ok());
  EXPECT_EQ(d->stop(), 0);
}
