#include "..\script_component.hpp"
/*
 * Internal: calls, with a "timeout" error, the reply handlers of requests
 * whose deadline passed without any reply callback.
 */

private _now = diag_tickTime;
private _expired = [];
{
    (GVAR(replyHandlers) get _x) params ["", "", "_deadline"];
    if (_now > _deadline) then { _expired pushBack _x };
} forEach keys GVAR(replyHandlers);

{
    private _entry = GVAR(replyHandlers) deleteAt _x;
    _entry params ["_handler", "_args"];
    [nil, "", "timeout: no reply came back from the extension", _args] call _handler;
} forEach _expired;
