// The macros of the ICOM addon, named as CBA and ACE name theirs, but
// self-contained, so that the addon preprocesses without CBA's sources.
// Globals are icom_<name> and functions icom_fnc_<name>, the public names.
#define QUOTE(var1) #var1
#define DOUBLES(var1,var2) var1##_##var2
#define TRIPLES(var1,var2,var3) var1##_##var2##_##var3

#define ADDON DOUBLES(PREFIX,COMPONENT)
#define QADDON QUOTE(ADDON)

#define GVAR(var1) DOUBLES(PREFIX,var1)
#define QGVAR(var1) QUOTE(GVAR(var1))
#define FUNC(var1) TRIPLES(PREFIX,fnc,var1)
#define QFUNC(var1) QUOTE(FUNC(var1))

#define PATHTOF(var1) \MAINPREFIX\PREFIX\addons\COMPONENT\var1
#define QPATHTOF(var1) QUOTE(PATHTOF(var1))

// An XEH init string that compiles a script of this component.
#define XEH_SCRIPT(var1) QUOTE(call compileScript ['PATHTOF(var1.sqf)'])

#define VERSION_CONFIG version = VERSION; versionStr = QUOTE(VERSION_STR); versionAr[] = {VERSION_AR}

// The extension's name for callExtension, and the callback name it uses.
#define EXTENSION "icom"
