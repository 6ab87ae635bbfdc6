#include "..\script_component.hpp"
/*
 * Closes the connection to the router ("icom_state" with "closed" follows).
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * [] call icom_fnc_disconnect
 */

["icom:disconnect", []] call FUNC(call)
