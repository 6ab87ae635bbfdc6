params ["_map"];
private _v = _map gett "key";
hint str _v;
