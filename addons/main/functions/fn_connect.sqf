#include "..\script_component.hpp"
/*
 * Connects to the ICOM router. The outcome arrives as the CBA event
 * "icom_state" (connecting, connected, reconnecting, ...); the extension
 * reconnects by itself after that.
 *
 * Arguments:
 * 0: Router address "host:port"; "" uses icom.toml <STRING> (default: "")
 * 1: Expected server id; "" takes it from the certificate <STRING> (default: "")
 *
 * Return Value:
 * Ticket id, or "" on failure <STRING>
 *
 * Example:
 * [] call icom_fnc_connect
 */
params [["_address", "", [""]], ["_serverId", "", [""]]];

["icom:connect", [_address, _serverId]] call FUNC(call)
