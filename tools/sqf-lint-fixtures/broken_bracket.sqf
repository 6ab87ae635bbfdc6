params ["_a", "_b";
hint str _a;
