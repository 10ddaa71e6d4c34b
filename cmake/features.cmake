# Generates the registration code for the feature list: library udm_features
# (every feature's targets and backing sources, TargetRegistry::builtin()) and
# udm_features_cli (every feature's `udm` verbs). A feature <f> is a folder
# src/<f> defining library udm_<f> with `void register_feature_<f>(Features&)`
# and, optionally, library udm_<f>_cli with
# `void register_feature_<f>_cli(CLI::App&)`.
set(UDM_FEATURE_DECLS "")
set(UDM_FEATURE_CALLS "")
set(UDM_FEATURE_CLI_DECLS "")
set(UDM_FEATURE_CLI_CALLS "")
set(_libs "")
set(_cli_libs "")
foreach(f IN LISTS UDM_FEATURES)
  if(NOT TARGET udm_${f})
    message(FATAL_ERROR "feature '${f}': src/${f} must define library udm_${f}")
  endif()
  string(MAKE_C_IDENTIFIER "${f}" id)
  string(APPEND UDM_FEATURE_DECLS "void register_feature_${id}(Features& f);\n")
  string(APPEND UDM_FEATURE_CALLS "    register_feature_${id}(f);\n")
  list(APPEND _libs udm_${f})
  if(TARGET udm_${f}_cli)
    string(APPEND UDM_FEATURE_CLI_DECLS "void register_feature_${id}_cli(CLI::App& app);\n")
    string(APPEND UDM_FEATURE_CLI_CALLS "  register_feature_${id}_cli(app);\n")
    list(APPEND _cli_libs udm_${f}_cli)
  endif()
endforeach()
set(_gen ${CMAKE_BINARY_DIR}/generated)
configure_file(${CMAKE_SOURCE_DIR}/cmake/features.cpp.in ${_gen}/features.cpp @ONLY)
configure_file(${CMAKE_SOURCE_DIR}/cmake/features_cli.cpp.in ${_gen}/features_cli.cpp @ONLY)
add_library(udm_features STATIC ${_gen}/features.cpp)
target_link_libraries(udm_features PUBLIC udm_device ${_libs})
add_library(udm_features_cli STATIC ${_gen}/features_cli.cpp)
target_link_libraries(udm_features_cli PUBLIC udm_features udm_cli_common ${_cli_libs})
