// What every component of the ICOM mod shares: its prefixes, version and
// the game version it needs (toJSON/fromJSON arrived in 2.18).
#define MAINPREFIX z
#define PREFIX icom

#include "script_version.hpp"

#define VERSION MAJOR.MINOR
#define VERSION_STR MAJOR.MINOR.PATCHLVL.BUILD
#define VERSION_AR MAJOR,MINOR,PATCHLVL,BUILD

#define REQUIRED_VERSION 2.18

#ifdef COMPONENT_BEAUTIFIED
    #define COMPONENT_NAME QUOTE(ICOM - COMPONENT_BEAUTIFIED)
#else
    #define COMPONENT_NAME QUOTE(ICOM - COMPONENT)
#endif
