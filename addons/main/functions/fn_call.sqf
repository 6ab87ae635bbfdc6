#include "..\script_component.hpp"
/*
 * Calls an extension command and turns its return code into a result.
 *
 * Arguments:
 * 0: Command, e.g. "icom:send" <STRING>
 * 1: Arguments <ARRAY>
 *
 * Return Value:
 * The command's result (a ticket id for most commands), or "" on failure;
 * then icom_lastError says why <STRING>
 *
 * Example:
 * ["icom:status", []] call icom_fnc_call
 */
params ["_command", "_arguments"];

private _answer = EXTENSION callExtension [_command, _arguments];
_answer params [["_result", ""], ["_code", -1], ["_engineCode", 0]];

if (_engineCode != 0) exitWith {
    GVAR(lastError) = format ["%1: the game could not call the extension (error %2); is it loaded?", _command, _engineCode];
    diag_log text ("[ICOM] ERROR: " + GVAR(lastError));
    ""
};

if (_code == 0) exitWith {
    GVAR(lastError) = "";
    _result
};

private _why = switch (true) do {
    case (_code == 1): { "unknown command" };
    case (_code >= 20 && {_code < 30}): { format ["wrong number of arguments (%1 given)", _code - 20] };
    case (_code >= 30 && {_code < 40}): { format ["argument %1 could not be read", _code - 30] };
    case (_code == 4): { "the result was too large for the output buffer" };
    case (_code == 9): { _result };
    default { format ["return code %1", _code] };
};
GVAR(lastError) = format ["%1: %2", _command, _why];
diag_log text ("[ICOM] ERROR: " + GVAR(lastError));
""
