#include "script_component.hpp"
/*
 * Runs on every machine after the mission's init (unscheduled). The
 * extension lives on the server: register its one callback handler there.
 */

if (!isServer) exitWith {};

// One cheap call first: antivirus and BattlEye may stall the first one.
private _version = EXTENSION callExtension "icom:version";
if (_version isEqualTo "") exitWith {
    diag_log text "[ICOM] ERROR: the icom extension did not load (is icom_x64 in the @icom folder, and @icom in -serverMod?)";
};
diag_log text format ["[ICOM] extension %1 loaded", _version];

// Every result comes back through this handler; it only looks at ours.
GVAR(callbackHandler) = addMissionEventHandler ["ExtensionCallback", {
    params ["_name", "_function", "_data"];
    if (_name == "icom") then {
        [_function, _data] call FUNC(handleCallback);
    };
}];

// Requests whose reply never came (not even the extension's timeout).
GVAR(timeoutHandler) = [{ call FUNC(checkTimeouts) }, 1] call CBA_fnc_addPerFrameHandler;

// Connect now if the server's CBA setting says so (see XEH_preInit).
if (missionNamespace getVariable [QGVAR(autoConnect), false]) then {
    [] call FUNC(connect);
};
