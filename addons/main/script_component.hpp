#define COMPONENT main
#define COMPONENT_BEAUTIFIED Main
#include "script_mod.hpp"
#include "script_macros.hpp"
