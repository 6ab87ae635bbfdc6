private _a = 1
private _b = 2;
hint str (_a + _b);
