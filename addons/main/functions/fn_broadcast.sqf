#include "..\script_component.hpp"
/*
 * Sends an event to every other connected server.
 *
 * Arguments:
 * 0: Event name <STRING>
 * 1: Data <ANY> (default: nil)
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["global_alert", createHashMapFromArray [["text", "Restart in 5 minutes"]]] call icom_fnc_broadcast
 */
params [["_event", "", [""]], ["_data", nil]];

private _json = if (isNil "_data") then { "null" } else { toJSON _data };
["icom:broadcast", [_event, _json]] call FUNC(call)
