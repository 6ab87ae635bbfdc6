#include "..\script_component.hpp"
/*
 * Internal: tells the extension how many callbacks were handled since the
 * last call (once a frame at most), so that it may send that many more.
 */

private _handled = GVAR(handled);
GVAR(handled) = 0;
GVAR(creditScheduled) = false;
if (_handled > 0) then {
    ["icom:ready", [_handled]] call FUNC(call);
};
