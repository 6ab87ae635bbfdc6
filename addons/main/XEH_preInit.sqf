#include "script_component.hpp"
/*
 * Runs on every machine before the mission's init (unscheduled): the
 * state the functions share.
 */

// Request ticket -> [handler code, handler arguments, deadline (diag_tickTime)].
GVAR(replyHandlers) = createHashMap;
// Callbacks handled since the last icom:ready (credit for the extension).
GVAR(handled) = 0;
GVAR(creditScheduled) = false;
// The connection's last state, and this server's identity once connected.
GVAR(state) = "idle";
GVAR(serverId) = "";
// The last error a function met (a sentence), "" if none.
GVAR(lastError) = "";

// Server admins may have the server connect at every mission start (CBA
// addon options, or cba_settings.sqf: icom_autoConnect = true).
[
    QGVAR(autoConnect), "CHECKBOX",
    ["Connect at mission start", "Connect to the ICOM router when a mission starts. The connection then persists across missions."],
    "ICOM", false, 1
] call CBA_fnc_addSetting;
