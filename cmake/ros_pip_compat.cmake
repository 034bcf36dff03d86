# Makes a ROS 2 interface package build against the ROS 2 wheels from PyPI.
#
# Inject it into an unmodified ROS package with
#   -DCMAKE_PROJECT_INCLUDE=<this file>
# (CMake includes it right after the package's project() call). It is harmless
# in a regular ROS installation, so colcon builds may always pass it.
#
# Why it is needed (see shared/guides/ros_from_pypi.md, section 1):
#  * the wheels install an ament prefix *into the Python environment*, which may
#    be pip's temporary isolated build env; CMake and the ament index must be
#    pointed at it, otherwise find_package() and the typesupport lookup fail;
#  * every wheel's export_*__rosidl_generator_pyExport.cmake hard-codes the
#    include dirs of the wheel build container (/opt/python/cp3XX-cp3XX/...),
#    which do not exist here and make generation fail. Interfaces that pip
#    generated (our vision_msgs) carry the same kind of stale path: the NumPy
#    of pip's deleted build env (/tmp/pip-build-env-*/...). We swap such
#    missing Python/NumPy include dirs for this interpreter's once all targets
#    are imported.
#
# Inputs (all optional):
#   Python3_EXECUTABLE  interpreter that has the ROS wheels (default: found one)
#   ROS_WHEEL_PREFIX    the prefix holding the wheels' share/, lib/, include/

include_guard(GLOBAL)

if(NOT Python3_EXECUTABLE)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
endif()

if(NOT ROS_WHEEL_PREFIX)
  # rosidl_pycommon sits in <prefix>/lib/python3.X/site-packages/rosidl_pycommon/
  # in every layout we support (venv, pip build env, /opt/ros/<distro>).
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
      "import pathlib, rosidl_pycommon as m; print(pathlib.Path(m.__file__).resolve().parents[4])"
    OUTPUT_VARIABLE ROS_WHEEL_PREFIX
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _ros_pip_compat_rc)
  if(NOT _ros_pip_compat_rc EQUAL 0)
    message(FATAL_ERROR
      "ros_pip_compat: ${Python3_EXECUTABLE} cannot import rosidl_pycommon; "
      "install the ROS build wheels (see pyproject.toml [build-system]).")
  endif()
endif()
message(STATUS "ros_pip_compat: ROS prefix ${ROS_WHEEL_PREFIX}")
list(PREPEND CMAKE_PREFIX_PATH "${ROS_WHEEL_PREFIX}")

# Typesupports are discovered through the ament index, which reads only the
# environment. Put every prefix CMake searches that carries an index on it.
foreach(_ros_pip_compat_prefix IN LISTS CMAKE_PREFIX_PATH)
  if(IS_DIRECTORY "${_ros_pip_compat_prefix}/share/ament_index"
     AND NOT ":$ENV{AMENT_PREFIX_PATH}:" MATCHES ":${_ros_pip_compat_prefix}:")
    if("$ENV{AMENT_PREFIX_PATH}" STREQUAL "")
      set(ENV{AMENT_PREFIX_PATH} "${_ros_pip_compat_prefix}")
    else()
      set(ENV{AMENT_PREFIX_PATH} "${_ros_pip_compat_prefix}:$ENV{AMENT_PREFIX_PATH}")
    endif()
  endif()
endforeach()

function(_ros_pip_compat_fix_python_includes)
  set(_fixed_targets "")
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    set(_stale FALSE)
    foreach(_dir IN LISTS _dirs)
      # Only missing dirs that look like Python or NumPy headers; anything
      # else missing is a real error CMake should keep reporting.
      if(NOT EXISTS "${_dir}" AND _dir MATCHES "(^/opt/python/|pip-build-env|numpy|/include/python[0-9])")
        set(_stale TRUE)
      else()
        list(APPEND _kept "${_dir}")
      endif()
    endforeach()
    if(NOT _stale)
      continue()
    endif()
    if(NOT Python3_NumPy_INCLUDE_DIRS)
      find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
    endif()
    set(_dirs ${_kept} ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
    list(REMOVE_DUPLICATES _dirs)
    set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_dirs}")
    list(APPEND _fixed_targets ${_target})
  endforeach()
  list(LENGTH _fixed_targets _count)
  message(STATUS "ros_pip_compat: fixed Python include dirs of ${_count} imported targets")
endfunction()

# Deferred to the end of the top-level CMakeLists, after rosidl imported the
# dependency targets but before generation, when target properties are read.
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _ros_pip_compat_fix_python_includes)
