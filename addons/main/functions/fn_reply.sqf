#include "..\script_component.hpp"
/*
 * Replies to a received event (a request). The router's answer arrives as
 * "icom_ack" with the returned ticket id.
 *
 * Arguments:
 * 0: The event's _meta (from "icom_event"), or its "request" handle <HASHMAP, STRING>
 * 1: Data <ANY> (default: nil)
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["icom_event", {
 *     params ["_event", "_data", "_from", "_meta"];
 *     if (_event == "whoami") then { [_meta, profileName] call icom_fnc_reply };
 * }] call CBA_fnc_addEventHandler
 */
params [["_request", "", ["", createHashMap]], ["_data", nil]];

if (_request isEqualType createHashMap) then {
    _request = _request getOrDefault ["request", ""];
};
private _json = if (isNil "_data") then { "null" } else { toJSON _data };
["icom:reply", [_request, _json]] call FUNC(call)
