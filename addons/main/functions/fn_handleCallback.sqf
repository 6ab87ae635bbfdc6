#include "..\script_component.hpp"
/*
 * Internal: handles one callback of the extension (called by the
 * ExtensionCallback handler, unscheduled) and raises the CBA local events:
 * - "icom_event" [_event, _data, _from, _meta]
 * - "icom_ack"   [_id, _ok, _ack]
 * - "icom_reply" [_id, _data, _from, _error]
 * - "icom_state" [_state, _info]
 * - "icom_error" [_code, _message]
 * - "icom_presence" [_serverId, _online], once per server that came or left
 *
 * Arguments:
 * 0: Kind: event, ack, reply, state, error, presence or large <STRING>
 * 1: JSON text <STRING>
 */
params ["_kind", "_json"];

// Credit: once a frame, tell the extension how many callbacks were handled.
GVAR(handled) = GVAR(handled) + 1;
if (!GVAR(creditScheduled)) then {
    GVAR(creditScheduled) = true;
    [{ call FUNC(returnCredit) }] call CBA_fnc_execNextFrame;
};

// A payload too large for one callback: pull it in pages, then go on.
if (_kind == "large") then {
    private _notice = fromJSON _json;
    _kind = _notice get "kind";
    _json = [_notice get "handle", _notice get "pages"] call FUNC(fetch);
};
if (_json isEqualTo "") exitWith {
    diag_log text format ["[ICOM] ERROR: a %1 callback was lost: %2", _kind, GVAR(lastError)];
};

private _value = fromJSON _json;
switch (_kind) do {
    case "event": {
        private _data = _value deleteAt "data";
        [QGVAR(event), [_value get "event", _data, _value get "from", _value]] call CBA_fnc_localEvent;
        if (missionNamespace getVariable [QGVAR(forgeEvents), false]) then {
            ["forge_icom_event", [_value get "event", _data]] call CBA_fnc_localEvent;
        };
    };
    case "ack": {
        [QGVAR(ack), [_value get "id", _value get "ok", _value]] call CBA_fnc_localEvent;
    };
    case "reply": {
        private _id = _value get "id";
        private _data = _value get "data";
        private _from = _value getOrDefault ["from", ""];
        private _error = "";
        if ("error" in _value) then {
            private _e = _value get "error";
            _error = format ["%1: %2", _e get "code", _e get "message"];
        };
        private _entry = GVAR(replyHandlers) deleteAt _id;
        if (!isNil "_entry") then {
            _entry params ["_handler", "_args"];
            [_data, _from, _error, _args] call _handler;
        };
        [QGVAR(reply), [_id, _data, _from, _error]] call CBA_fnc_localEvent;
    };
    case "state": {
        GVAR(state) = _value get "state";
        if (GVAR(state) == "connected") then {
            GVAR(serverId) = _value get "server_id";
        };
        diag_log text format ["[ICOM] connection %1: %2", GVAR(state), _json];
        [QGVAR(state), [GVAR(state), _value]] call CBA_fnc_localEvent;
    };
    case "presence": {
        // [[_serverId, _online], ...] in the order it happened.
        {
            _x params ["_serverId", "_online"];
            [QGVAR(presence), [_serverId, _online]] call CBA_fnc_localEvent;
        } forEach _value;
    };
    case "error": {
        diag_log text format ["[ICOM] ERROR: %1: %2", _value get "code", _value get "message"];
        [QGVAR(error), [_value get "code", _value get "message"]] call CBA_fnc_localEvent;
    };
    default {
        diag_log text format ["[ICOM] ERROR: unknown callback kind %1", _kind];
    };
};
