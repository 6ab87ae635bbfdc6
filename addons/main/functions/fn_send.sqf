#include "..\script_component.hpp"
/*
 * Sends an event to one server. The router's answer arrives as the CBA
 * event "icom_ack" with the returned ticket id.
 *
 * Arguments:
 * 0: Server id <STRING>
 * 1: Event name <STRING>
 * 2: Data: anything toJSON can write (HashMap, array, string, number, bool) <ANY> (default: nil)
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["us-1", "supply_drop", createHashMapFromArray [["pos", [1234.5, 5678.9, 0]]]] call icom_fnc_send
 */
params [["_server", "", [""]], ["_event", "", [""]], ["_data", nil]];

private _json = if (isNil "_data") then { "null" } else { toJSON _data };
["icom:send", [_server, _event, _json]] call FUNC(call)
