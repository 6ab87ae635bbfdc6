#include "..\script_component.hpp"
/*
 * The extension's status: connection state, identity, the other servers
 * connected ("online", as icom_fnc_peers returns them; "peers" counts
 * them), counters, what it had to shed.
 *
 * Return Value:
 * Status <HASHMAP>, empty if the extension did not answer
 *
 * Example:
 * (call icom_fnc_status) get "online"
 */

private _json = ["icom:status", []] call FUNC(call);
if (_json isEqualTo "") exitWith { createHashMap };
private _status = fromJSON _json;
_status set ["online", call FUNC(peers)];
_status
