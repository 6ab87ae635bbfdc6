#include "..\script_component.hpp"
/*
 * The extension's status: connection state, identity, counters, what it
 * had to shed.
 *
 * Return Value:
 * Status <HASHMAP>, empty if the extension did not answer
 *
 * Example:
 * (call icom_fnc_status) get "state"
 */

private _json = ["icom:status", []] call FUNC(call);
if (_json isEqualTo "") exitWith { createHashMap };
fromJSON _json
