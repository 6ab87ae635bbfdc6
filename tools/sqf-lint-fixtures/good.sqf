#define QUOTE(var1) #var1
#define GVAR(var1) icom_##var1
// Commands newer than sqflint, used as the addon uses them.
params ["_name", "_function", "_data"];
private _value = fromJSON _data;
private _event = _value get "event";
private _meta = _value getOrDefault ["meta", createHashMap];
_meta set ["seen", true];
private _data2 = _value deleteAt "data";
if ("error" in _value && {_event isNotEqualTo ""}) then {
    GVAR(lastError) = toJSON (createHashMapFromArray [["name", _name], ["kind", _function]]);
};
{
    diag_log text format ["%1 %2", _x, _meta get _x];
} forEach keys _meta;
[QUOTE(GVAR(event)), [_event, _data2]] call CBA_fnc_localEvent;
