# Registration code for a feature list. A feature <f> is a folder defining
# library udm_<f> with `void register_feature_<f>(Features&)` (its targets and
# backing sources) and, optionally, library udm_<f>_cli with
# `void register_feature_<f>_cli(CLI::App&)` (its `udm` verbs).
#
# udm_feature_library(<lib> <feature>...) generates library <lib> (calls every
# feature's hook; defines TargetRegistry::builtin() and register_features())
# and <lib>_cli (register_features_cli()). The product's list is UDM_FEATURES
# in the top-level CMakeLists.txt; tests add test-only features (tests/example).
function(udm_feature_library lib)
  set(UDM_FEATURE_DECLS "")
  set(UDM_FEATURE_CALLS "")
  set(UDM_FEATURE_CLI_DECLS "")
  set(UDM_FEATURE_CLI_CALLS "")
  set(libs "")
  set(cli_libs "")
  foreach(f IN LISTS ARGN)
    if(NOT TARGET udm_${f})
      message(FATAL_ERROR "feature '${f}': its folder must define library udm_${f}")
    endif()
    string(MAKE_C_IDENTIFIER "${f}" id)
    string(APPEND UDM_FEATURE_DECLS "void register_feature_${id}(Features& f);\n")
    string(APPEND UDM_FEATURE_CALLS "    register_feature_${id}(f);\n")
    list(APPEND libs udm_${f})
    if(TARGET udm_${f}_cli)
      string(APPEND UDM_FEATURE_CLI_DECLS "void register_feature_${id}_cli(CLI::App& app);\n")
      string(APPEND UDM_FEATURE_CLI_CALLS "  register_feature_${id}_cli(app);\n")
      list(APPEND cli_libs udm_${f}_cli)
    endif()
  endforeach()
  set(gen ${CMAKE_BINARY_DIR}/generated/${lib})
  configure_file(${PROJECT_SOURCE_DIR}/cmake/features.cpp.in ${gen}/features.cpp @ONLY)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/features_cli.cpp.in ${gen}/features_cli.cpp @ONLY)
  add_library(${lib} STATIC ${gen}/features.cpp)
  target_link_libraries(${lib} PUBLIC udm_device ${libs})
  add_library(${lib}_cli STATIC ${gen}/features_cli.cpp)
  target_link_libraries(${lib}_cli PUBLIC ${lib} udm_cli_common ${cli_libs})
endfunction()
