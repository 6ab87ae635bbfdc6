#include "..\script_component.hpp"
/*
 * Drops a persistent event from the router, so that servers that connect
 * later no longer get it (remoteExec's "remove the JIP entry").
 *
 * Arguments:
 * 0: Persist id <STRING>
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * ["restart-notice"] call icom_fnc_forget
 */
params [["_persistId", "", [""]]];

["icom:forget", [_persistId]] call FUNC(call)
