#include "..\script_component.hpp"
/*
 * The other servers connected, as the extension knows them now (at once;
 * icom_presence events still on their way to this frame may lag behind
 * it). While disconnected, the servers connected when the connection was
 * lost.
 *
 * Return Value:
 * Server ids <ARRAY of STRINGs>, [] if none or if the extension did not
 * answer (then icom_lastError says why)
 *
 * Example:
 * if ("us-1" in (call icom_fnc_peers)) then { ... };
 */

private _json = ["icom:peers", []] call FUNC(call);
if (_json isEqualTo "") exitWith { [] };
private _value = fromJSON _json;
// A long list comes as a handle, pulled in pages like a large callback.
if (_value isEqualType createHashMap) then {
    _json = [_value get "handle", _value get "pages"] call FUNC(fetch);
    _value = if (_json isEqualTo "") then { [] } else { fromJSON _json };
};
_value
