#include "..\script_component.hpp"
/*
 * Internal: pulls a large payload from the extension, page by page.
 *
 * Arguments:
 * 0: Handle <STRING>
 * 1: Number of pages <NUMBER>
 *
 * Return Value:
 * The payload's JSON text, or "" if a page could not be fetched <STRING>
 */
params ["_handle", "_pages"];

private _parts = [];
private _failed = false;
for "_page" from 0 to (_pages - 1) do {
    private _part = ["icom:fetch", [_handle, _page]] call FUNC(call);
    if (_part isEqualTo "" && {GVAR(lastError) isNotEqualTo ""}) exitWith { _failed = true };
    _parts pushBack _part;
};
if (_failed) exitWith { "" };
_parts joinString ""
