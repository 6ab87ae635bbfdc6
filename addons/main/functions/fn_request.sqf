#include "..\script_component.hpp"
/*
 * Sends a request to one server and calls a handler with its reply, or
 * with the error when none comes within the timeout.
 *
 * The handler runs unscheduled (from the extension's callback): it must not
 * sleep or wait; spawn what needs to. It gets:
 * [_data, _from, _error, _args]: _error is "" on success, otherwise
 * "code: message" (code "timeout", "not_found", "unavailable", ...) and
 * _data is nil.
 *
 * Arguments:
 * 0: Server id <STRING>
 * 1: Event name <STRING>
 * 2: Data <ANY> (default: nil)
 * 3: Handler <CODE> (default: {})
 * 4: Timeout in seconds <NUMBER> (default: 10)
 * 5: Arguments passed to the handler <ANY> (default: [])
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["eu-1", "bank_balance", createHashMapFromArray [["uid", getPlayerUID _unit]], {
 *     params ["_data", "_from", "_error", "_unit"];
 *     if (_error isEqualTo "") then { hint format ["Balance: %1", _data get "balance"] };
 * }, 5, _unit] call icom_fnc_request
 */
params [["_server", "", [""]], ["_event", "", [""]], ["_data", nil], ["_handler", {}, [{}]], ["_timeout", 10, [0]], ["_args", []]];

private _json = if (isNil "_data") then { "null" } else { toJSON _data };
private _ticket = ["icom:request", [_server, _event, _json, _timeout]] call FUNC(call);
if (_ticket isNotEqualTo "") then {
    // The extension answers a timeout itself; this deadline only guards
    // against a reply that never comes back at all.
    GVAR(replyHandlers) set [_ticket, [_handler, _args, diag_tickTime + _timeout + 5]];
};
_ticket
