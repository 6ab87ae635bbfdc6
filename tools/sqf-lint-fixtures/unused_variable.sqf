private _never = 5;
hint "x";
