#include <gtest/gtest.h>
#include <unistd.h>

#include "common/sys_util.h"
#include "daemon/control_protocol.h"

using namespace udm;
using nlohmann::json;

namespace {
json req(DeviceRegistry& reg, const json& r) { return handle_request(reg, r); }
std::string err(const json& rep) {
  EXPECT_FALSE(rep.value("ok", true)) << rep.dump();
  return rep.value("error", "");
}
}  // namespace

TEST(ControlProtocol, CreateInspectReloadRemove) {
  test::TempDir tmp;
  std::string f = tmp.file("backing");
  test::write_file(f, std::vector<uint8_t>(1 << 20, 3));
  DeviceRegistry reg;
  auto rep = req(reg, {{"verb", "create"}, {"name", "d"}, {"table", "0 1024 linear " + f + " 0\n1024 1024 zero"}});
  ASSERT_TRUE(rep["ok"]) << rep.dump();
  EXPECT_EQ(rep["result"]["size_bytes"], 2048 * 512);
  rep = req(reg, {{"verb", "ls"}});
  ASSERT_EQ(rep["result"].size(), 1u);
  EXPECT_EQ(rep["result"][0]["name"], "d");
  rep = req(reg, {{"verb", "info"}, {"name", "d"}});
  EXPECT_EQ(rep["result"]["read_only"], false);
  EXPECT_EQ(rep["result"]["suspended"], false);
  EXPECT_EQ(rep["result"]["open_count"], 0);
  rep = req(reg, {{"verb", "status"}, {"name", "d"}});
  ASSERT_EQ(rep["result"].size(), 2u);
  EXPECT_EQ(rep["result"][1]["target"], "zero");
  EXPECT_EQ(rep["result"][1]["start"], 1024);
  rep = req(reg, {{"verb", "table"}, {"name", "d"}});
  EXPECT_EQ(rep["result"], "0 1024 linear " + f + " 0\n1024 1024 zero\n");
  rep = req(reg, {{"verb", "reload"}, {"name", "d"}, {"table", "0 2048 zero"}});
  ASSERT_TRUE(rep["ok"]) << rep.dump();
  EXPECT_EQ(req(reg, {{"verb", "info"}, {"name", "d"}})["result"]["inactive_table"], true);
  EXPECT_EQ(req(reg, {{"verb", "table"}, {"name", "d"}, {"inactive", true}})["result"], "0 2048 zero\n");
  ASSERT_TRUE(req(reg, {{"verb", "suspend"}, {"name", "d"}})["ok"]);
  EXPECT_EQ(req(reg, {{"verb", "info"}, {"name", "d"}})["result"]["suspended"], true);
  ASSERT_TRUE(req(reg, {{"verb", "resume"}, {"name", "d"}})["ok"]);
  EXPECT_EQ(req(reg, {{"verb", "table"}, {"name", "d"}})["result"], "0 2048 zero\n");
  EXPECT_NE(err(req(reg, {{"verb", "message"}, {"name", "d"}, {"sector", 0}, {"args", {"hello"}}})).find("accepts no messages"),
            std::string::npos);
  EXPECT_NE(err(req(reg, {{"verb", "message"}, {"name", "d"}, {"sector", 99999}, {"args", {"x"}}})).find("beyond the end"),
            std::string::npos);
  ASSERT_TRUE(req(reg, {{"verb", "remove"}, {"name", "d"}})["ok"]);
  EXPECT_TRUE(req(reg, {{"verb", "ls"}})["result"].empty());
}

TEST(ControlProtocol, BadRequestsGetClearErrors) {
  DeviceRegistry reg;
  EXPECT_EQ(err(req(reg, json::array())), "request must be a JSON object");
  EXPECT_EQ(err(req(reg, {{"name", "x"}})), "request lacks field 'verb'");
  EXPECT_EQ(err(req(reg, {{"verb", 3}})), "field 'verb' must be a string");
  EXPECT_EQ(err(req(reg, {{"verb", "frob"}, {"name", "x"}})), "no device named 'x'");
  EXPECT_EQ(err(req(reg, {{"verb", "create"}, {"name", "x"}})), "request lacks field 'table'");
  EXPECT_EQ(err(req(reg, {{"verb", "create"}, {"name", "x"}, {"table", "0 8 zero"}, {"read_only", "yes"}})),
            "field 'read_only' must be a boolean");
  EXPECT_EQ(err(req(reg, {{"verb", "create"}, {"name", "x"}, {"table", "8 8 zero"}})),
            "line 1: gap: segment starts at sector 8 but the previous one ends at sector 0");
  ASSERT_TRUE(req(reg, {{"verb", "create"}, {"name", "x"}, {"table", "0 8 zero"}})["ok"]);
  EXPECT_EQ(err(req(reg, {{"verb", "frob"}, {"name", "x"}})), "unknown verb 'frob'");
  EXPECT_EQ(err(req(reg, {{"verb", "message"}, {"name", "x"}, {"sector", -1}, {"args", {"a"}}})),
            "field 'sector' must be a non-negative integer");
  EXPECT_EQ(err(req(reg, {{"verb", "message"}, {"name", "x"}, {"sector", 0}, {"args", {1}}})),
            "field 'args' must be an array of strings");
  auto line = handle_request_line(reg, "{not json");
  EXPECT_NE(line.find("request is not valid JSON"), std::string::npos);
  EXPECT_EQ(line.back(), '\n');
  line = handle_request_line(reg, std::string(kMaxControlRequest + 1, ' '));
  EXPECT_NE(line.find("request too large"), std::string::npos);
  // Invalid UTF-8 is refused as JSON, without throwing.
  line = handle_request_line(reg, "{\"verb\":\"info\",\"name\":\"\xff\xfe\"}");
  EXPECT_NE(line.find("request is not valid JSON"), std::string::npos);
}
