#include "..\script_component.hpp"
/*
 * Sends an event to a target, as remoteExec does, by server identity.
 *
 * Arguments:
 * 0: Target <STRING, ARRAY, HASHMAP>
 *    "all" (every other server), "everyone" (this one too), a server id,
 *    an array of server ids, or a HashMap: [["group", "eu"]],
 *    [["except", ["us-1"]]], [["servers", [...]]], [["server", "id"]]
 * 1: Event name <STRING>
 * 2: Data <ANY> (default: nil)
 * 3: Options <HASHMAP, BOOL, STRING> (default: no options)
 *    HashMap with "persist" (true, or a persist id) and "ttl" (seconds);
 *    or, like remoteExec's JIP parameter, true or a persist id alone.
 *    As with remoteExec, an empty event name with a persist id removes
 *    that persistent event (icom_fnc_forget).
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["all", "global_alert", "Restart in 5 minutes", createHashMapFromArray [["persist", "restart-notice"], ["ttl", 600]]] call icom_fnc_sendTo
 * ["all", "", nil, "restart-notice"] call icom_fnc_sendTo
 */
params [["_target", "all", ["", [], createHashMap]], ["_event", "", [""]], ["_data", nil], ["_options", createHashMap, [createHashMap, true, ""]]];

if (_options isEqualType true) then {
    _options = createHashMapFromArray [["persist", _options]];
};
if (_options isEqualType "") then {
    _options = createHashMapFromArray [["persist", _options]];
};

// remoteExec's idiom: no function name and a JIP id removes the JIP entry.
if (_event isEqualTo "") exitWith {
    private _persist = _options getOrDefault ["persist", ""];
    if (_persist isEqualType "" && {_persist isNotEqualTo ""}) then {
        [_persist] call FUNC(forget)
    } else {
        GVAR(lastError) = "icom_fnc_sendTo: an empty event name needs a persist id (to remove it)";
        diag_log text ("[ICOM] ERROR: " + GVAR(lastError));
        ""
    };
};

private _json = if (isNil "_data") then { "null" } else { toJSON _data };
["icom:send_to", [toJSON _target, _event, _json, toJSON _options]] call FUNC(call)
