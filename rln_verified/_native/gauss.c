/* Fused float32 CPU kernels of proofs/gaussian.md: the ReLU moments of a Gaussian (RELU-6) and the exp of the
 * Bayesian layers' posterior std (EXP-1).
 *
 * relu_moments(mu, sigma) and its closed-form backward (RELU-1, RELU-4, RELU-5) for float32 tensors: every value is
 * read exactly into float64, evaluated with the branches and forms of the eager kernel in rln_verified/_gaussian.py,
 * and rounded once to float32. Four lanes at a time through GCC/clang vector extensions (plain C99 otherwise, no
 * intrinsics: any target compiles it, one without 256-bit vectors runs the same operations in narrower pieces); the
 * forward goes over blocks of 128 lanes in stages (ratio, phi, Mills ratio, moments) so that each loop is short and
 * its iterations independent. The rare tail lanes (a = mu/sigma < -4.5, the continued fraction) run scalar, with the
 * eager kernel's operations. The forward keeps, for the backward, the float64 mean, phi(|a|) and Q(|a|): the backward
 * evaluates no transcendental function.
 *
 * Primitives (RELU-6): phi(y) = exp(-y^2/2)/sqrt(2 pi) is a Cody-Waite reduction y^2/2 = k ln2 + r, |r| <= ln2/2,
 * and the degree-13 Taylor polynomial of exp(-r) (Estrin's form for its high part), times 2^-k assembled in the
 * exponent bits (0 below 2^-1022); erfcx(x), 0 <= x <= 50, is the table of 100 Chebyshev polynomials of S. G.
 * Johnson's Faddeeva package (the code torch.special.erfcx runs), copied verbatim below, evaluated in its Horner form.
 * The std's exp (EXP-1) is a float32 Cody-Waite reduction and Cephes' degree-7 polynomial, eight lanes at a time.
 * The Gaussian KL and its gradients (KL-2) read float32 values exactly into float64, use the atanh series of log1p
 * (no libm call) and round once to float32.
 * Every operation is a separately rounded IEEE operation (-ffp-contract=off).
 *
 * The erfcx table: Copyright (c) 2012 Massachusetts Institute of Technology. Permission is hereby granted,
 * free of charge, to any person obtaining a copy of this software and associated documentation files (the
 * "Software"), to deal in the Software without restriction, including without limitation the rights to use,
 * copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
 * persons to whom the Software is furnished to do so, subject to the following conditions: The above copyright
 * notice and this permission notice shall be included in all copies or substantial portions of the Software.
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED
 * TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL
 * THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
 * CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
 * DEALINGS IN THE SOFTWARE. (MIT license of the Faddeeva package.)
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef int64_t i64;
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));
typedef uint64_t v4u __attribute__((vector_size(32)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef float v4f __attribute__((vector_size(16)));

#define GAUSS_ABI 4

/* erfcx_y100 of the Faddeeva package: row k holds the Chebyshev polynomial in t = 2 y100 - (2k + 1) on
 * y100 in [k, k + 1), y100 = 400/(4 + x), coefficients of t^0 .. t^6 (and a 0 that pads the row to 64 bytes). */
static const double ERFCX_C[100][8] __attribute__((aligned(64))) = {
    {0.70878032454106438663e-3, 0.71234091047026302958e-3, 0.35779077297597742384e-5, 0.17403143962587937815e-7, 0.81710660047307788845e-10, 0.36885022360434957634e-12, 0.15917038551111111111e-14, 0.0},
    {0.21479143208285144230e-2, 0.72686402367379996033e-3, 0.36843175430938995552e-5, 0.18071841272149201685e-7, 0.85496449296040325555e-10, 0.38852037518534291510e-12, 0.16868473576888888889e-14, 0.0},
    {0.36165255935630175090e-2, 0.74182092323555510862e-3, 0.37948319957528242260e-5, 0.18771627021793087350e-7, 0.89484715122415089123e-10, 0.40935858517772440862e-12, 0.17872061464888888889e-14, 0.0},
    {0.51154983860031979264e-2, 0.75722840734791660540e-3, 0.39096425726735703941e-5, 0.19504168704300468210e-7, 0.93687503063178993915e-10, 0.43143925959079664747e-12, 0.18939926435555555556e-14, 0.0},
    {0.66457513172673049824e-2, 0.77310406054447454920e-3, 0.40289510589399439385e-5, 0.20271233238288381092e-7, 0.98117631321709100264e-10, 0.45484207406017752971e-12, 0.20076352213333333333e-14, 0.0},
    {0.82082389970241207883e-2, 0.78946629611881710721e-3, 0.41529701552622656574e-5, 0.21074693344544655714e-7, 0.10278874108587317989e-9, 0.47965201390613339638e-12, 0.21285907413333333333e-14, 0.0},
    {0.98039537275352193165e-2, 0.80633440108342840956e-3, 0.42819241329736982942e-5, 0.21916534346907168612e-7, 0.10771535136565470914e-9, 0.50595972623692822410e-12, 0.22573462684444444444e-14, 0.0},
    {0.11433927298290302370e-1, 0.82372858383196561209e-3, 0.44160495311765438816e-5, 0.22798861426211986056e-7, 0.11291291745879239736e-9, 0.53386189365816880454e-12, 0.23944209546666666667e-14, 0.0},
    {0.13099232878814653979e-1, 0.84167002467906968214e-3, 0.45555958988457506002e-5, 0.23723907357214175198e-7, 0.11839789326602695603e-9, 0.56346163067550237877e-12, 0.25403679644444444444e-14, 0.0},
    {0.14800987015587535621e-1, 0.86018092946345943214e-3, 0.47008265848816866105e-5, 0.24694040760197315333e-7, 0.12418779768752299093e-9, 0.59486890370320261949e-12, 0.26957764568888888889e-14, 0.0},
    {0.16540351739394069380e-1, 0.87928458641241463952e-3, 0.48520195793001753903e-5, 0.25711774900881709176e-7, 0.13030128534230822419e-9, 0.62820097586874779402e-12, 0.28612737351111111111e-14, 0.0},
    {0.18318536789842392647e-1, 0.89900542647891721692e-3, 0.50094684089553365810e-5, 0.26779777074218070482e-7, 0.13675822186304615566e-9, 0.66358287745352705725e-12, 0.30375273884444444444e-14, 0.0},
    {0.20136801964214276775e-1, 0.91936908737673676012e-3, 0.51734830914104276820e-5, 0.27900878609710432673e-7, 0.14357976402809042257e-9, 0.70114790311043728387e-12, 0.32252476000000000000e-14, 0.0},
    {0.21996459598282740954e-1, 0.94040248155366777784e-3, 0.53443911508041164739e-5, 0.29078085538049374673e-7, 0.15078844500329731137e-9, 0.74103813647499204269e-12, 0.34251892320000000000e-14, 0.0},
    {0.23898877187226319502e-1, 0.96213386835900177540e-3, 0.55225386998049012752e-5, 0.30314589961047687059e-7, 0.15840826497296335264e-9, 0.78340500472414454395e-12, 0.36381553564444444445e-14, 0.0},
    {0.25845480155298518485e-1, 0.98459293067820123389e-3, 0.57082915920051843672e-5, 0.31613782169164830118e-7, 0.16646478745529630813e-9, 0.82840985928785407942e-12, 0.38649975768888888890e-14, 0.0},
    {0.27837754783474696598e-1, 0.10078108563256892757e-2, 0.59020366493792212221e-5, 0.32979263553246520417e-7, 0.17498524159268458073e-9, 0.87622459124842525110e-12, 0.41066206488888888890e-14, 0.0},
    {0.29877251304899307550e-1, 0.10318204245057349310e-2, 0.61041829697162055093e-5, 0.34414860359542720579e-7, 0.18399863072934089607e-9, 0.92703227366365046533e-12, 0.43639844053333333334e-14, 0.0},
    {0.31965587178596443475e-1, 0.10566560976716574401e-2, 0.63151633192414586770e-5, 0.35924638339521924242e-7, 0.19353584758781174038e-9, 0.98102783859889264382e-12, 0.46381060817777777779e-14, 0.0},
    {0.34104450552588334840e-1, 0.10823541191350532574e-2, 0.65354356159553934436e-5, 0.37512918348533521149e-7, 0.20362979635817883229e-9, 0.10384187833037282363e-11, 0.49300625262222222221e-14, 0.0},
    {0.36295603928292425716e-1, 0.11089526167995268200e-2, 0.67654845095518363577e-5, 0.39184292949913591646e-7, 0.21431552202133775150e-9, 0.10994259106646731797e-11, 0.52409949102222222221e-14, 0.0},
    {0.38540888038840509795e-1, 0.11364917134175420009e-2, 0.70058230641246312003e-5, 0.40943644083718586939e-7, 0.22563034723692881631e-9, 0.11642841011361992885e-11, 0.55721092871111111110e-14, 0.0},
    {0.40842225954785960651e-1, 0.11650136437945673891e-2, 0.72569945502343006619e-5, 0.42796161861855042273e-7, 0.23761401711005024162e-9, 0.12332431172381557035e-11, 0.59246802364444444445e-14, 0.0},
    {0.43201627431540222422e-1, 0.11945628793917272199e-2, 0.75195743532849206263e-5, 0.44747364553960993492e-7, 0.25030885216472953674e-9, 0.13065684400300476484e-11, 0.63000532853333333334e-14, 0.0},
    {0.45621193513810471438e-1, 0.12251862608067529503e-2, 0.77941720055551920319e-5, 0.46803119830954460212e-7, 0.26375990983978426273e-9, 0.13845421370977119765e-11, 0.66996477404444444445e-14, 0.0},
    {0.48103121413299865517e-1, 0.12569331386432195113e-2, 0.80814333496367673980e-5, 0.48969667335682018324e-7, 0.27801515481905748484e-9, 0.14674637611609884208e-11, 0.71249589351111111110e-14, 0.0},
    {0.50649709676983338501e-1, 0.12898555233099055810e-2, 0.83820428414568799654e-5, 0.51253642652551838659e-7, 0.29312563849675507232e-9, 0.15556512782814827846e-11, 0.75775607822222222221e-14, 0.0},
    {0.53263363664388864181e-1, 0.13240082443256975769e-2, 0.86967260015007658418e-5, 0.53662102750396795566e-7, 0.30914568786634796807e-9, 0.16494420240828493176e-11, 0.80591079644444444445e-14, 0.0},
    {0.55946601353500013794e-1, 0.13594491197408190706e-2, 0.90262520233016380987e-5, 0.56202552975056695376e-7, 0.32613310410503135996e-9, 0.17491936862246367398e-11, 0.85713381688888888890e-14, 0.0},
    {0.58702059496154081813e-1, 0.13962391363223647892e-2, 0.93714365487312784270e-5, 0.58882975670265286526e-7, 0.34414937110591753387e-9, 0.18552853109751857859e-11, 0.91160736711111111110e-14, 0.0},
    {0.61532500145144778048e-1, 0.14344426411912015247e-2, 0.97331446201016809696e-5, 0.61711860507347175097e-7, 0.36325987418295300221e-9, 0.19681183310134518232e-11, 0.96952238400000000000e-14, 0.0},
    {0.64440817576653297993e-1, 0.14741275456383131151e-2, 0.10112293819576437838e-4, 0.64698236605933246196e-7, 0.38353412915303665586e-9, 0.20881176114385120186e-11, 0.10310784480000000000e-13, 0.0},
    {0.67430045633130393282e-1, 0.15153655418916540370e-2, 0.10509857606888328667e-4, 0.67851706529363332855e-7, 0.40504602194811140006e-9, 0.22157325110542534469e-11, 0.10964842115555555556e-13, 0.0},
    {0.70503365513338850709e-1, 0.15582323336495709827e-2, 0.10926868866865231089e-4, 0.71182482239613507542e-7, 0.42787405890153386710e-9, 0.23514379522274416437e-11, 0.11659571751111111111e-13, 0.0},
    {0.73664114037944596353e-1, 0.16028078812438820413e-2, 0.11364423678778207991e-4, 0.74701423097423182009e-7, 0.45210162777476488324e-9, 0.24957355004088569134e-11, 0.12397238257777777778e-13, 0.0},
    {0.76915792420819562379e-1, 0.16491766623447889354e-2, 0.11823685320041302169e-4, 0.78420075993781544386e-7, 0.47781726956916478925e-9, 0.26491544403815724749e-11, 0.13180196462222222222e-13, 0.0},
    {0.80262075578094612819e-1, 0.16974279491709504117e-2, 0.12305888517309891674e-4, 0.82350717698979042290e-7, 0.50511496109857113929e-9, 0.28122528497626897696e-11, 0.14010889635555555556e-13, 0.0},
    {0.83706822008980357446e-1, 0.17476561032212656962e-2, 0.12812343958540763368e-4, 0.86506399515036435592e-7, 0.53409440823869467453e-9, 0.29856186620887555043e-11, 0.14891851591111111111e-13, 0.0},
    {0.87254084284461718231e-1, 0.17999608886001962327e-2, 0.13344443080089492218e-4, 0.90900994316429008631e-7, 0.56486134972616465316e-9, 0.31698707080033956934e-11, 0.15825697795555555556e-13, 0.0},
    {0.90908120182172748487e-1, 0.18544478050657699758e-2, 0.13903663143426120077e-4, 0.95549246062549906177e-7, 0.59752787125242054315e-9, 0.33656597366099099413e-11, 0.16815130613333333333e-13, 0.0},
    {0.94673404508075481121e-1, 0.19112284419887303347e-2, 0.14491572616545004930e-4, 0.10046682186333613697e-6, 0.63221272959791000515e-9, 0.35736693975589130818e-11, 0.17862931591111111111e-13, 0.0},
    {0.98554641648004456555e-1, 0.19704208544725622126e-2, 0.15109836875625443935e-4, 0.10567036667675984067e-6, 0.66904168640019354565e-9, 0.37946171850824333014e-11, 0.18971959040000000000e-13, 0.0},
    {0.10255677889470089531e0, 0.20321499629472857418e-2, 0.15760224242962179564e-4, 0.11117756071353507391e-6, 0.70814785110097658502e-9, 0.40292553276632563925e-11, 0.20145143075555555556e-13, 0.0},
    {0.10668502059865093318e0, 0.20965479776148731610e-2, 0.16444612377624983565e-4, 0.11700717962026152749e-6, 0.74967203250938418991e-9, 0.42783716186085922176e-11, 0.21385479360000000000e-13, 0.0},
    {0.11094484319386444474e0, 0.21637548491908170841e-2, 0.17164995035719657111e-4, 0.12317915750735938089e-6, 0.79376309831499633734e-9, 0.45427901763106353914e-11, 0.22696025653333333333e-13, 0.0},
    {0.11534201115268804714e0, 0.22339187474546420375e-2, 0.17923489217504226813e-4, 0.12971465288245997681e-6, 0.84057834180389073587e-9, 0.48233721206418027227e-11, 0.24079890062222222222e-13, 0.0},
    {0.11988259392684094740e0, 0.23071965691918689601e-2, 0.18722342718958935446e-4, 0.13663611754337957520e-6, 0.89028385488493287005e-9, 0.51210161569225846701e-11, 0.25540227111111111111e-13, 0.0},
    {0.12457298393509812907e0, 0.23837544771809575380e-2, 0.19563942105711612475e-4, 0.14396736847739470782e-6, 0.94305490646459247016e-9, 0.54366590583134218096e-11, 0.27080225920000000000e-13, 0.0},
    {0.12941991566142438816e0, 0.24637684719508859484e-2, 0.20450821127475879816e-4, 0.15173366280523906622e-6, 0.99907632506389027739e-9, 0.57712760311351625221e-11, 0.28703099555555555556e-13, 0.0},
    {0.13443048593088696613e0, 0.25474249981080823877e-2, 0.21385669591362915223e-4, 0.15996177579900443030e-6, 0.10585428844575134013e-8, 0.61258809536787882989e-11, 0.30412080142222222222e-13, 0.0},
    {0.13961217543434561353e0, 0.26349215871051761416e-2, 0.22371342712572567744e-4, 0.16868008199296822247e-6, 0.11216596910444996246e-8, 0.65015264753090890662e-11, 0.32210394506666666666e-13, 0.0},
    {0.14497287157673800690e0, 0.27264675383982439814e-2, 0.23410870961050950197e-4, 0.17791863939526376477e-6, 0.11886425714330958106e-8, 0.68993039665054288034e-11, 0.34101266222222222221e-13, 0.0},
    {0.15052089272774618151e0, 0.28222846410136238008e-2, 0.24507470422713397006e-4, 0.18770927679626136909e-6, 0.12597184587583370712e-8, 0.73203433049229821618e-11, 0.36087889048888888890e-13, 0.0},
    {0.15626501395774612325e0, 0.29226079376196624949e-2, 0.25664553693768450545e-4, 0.19808568415654461964e-6, 0.13351257759815557897e-8, 0.77658124891046760667e-11, 0.38173420035555555555e-13, 0.0},
    {0.16221449434620737567e0, 0.30276865332726475672e-2, 0.26885741326534564336e-4, 0.20908350604346384143e-6, 0.14151148144240728728e-8, 0.82369170665974313027e-11, 0.40360957457777777779e-13, 0.0},
    {0.16837910595412130659e0, 0.31377844510793082301e-2, 0.28174873844911175026e-4, 0.22074043807045782387e-6, 0.14999481055996090039e-8, 0.87348993661930809254e-11, 0.42653528977777777779e-13, 0.0},
    {0.17476916455659369953e0, 0.32531815370903068316e-2, 0.29536024347344364074e-4, 0.23309632627767074202e-6, 0.15899007843582444846e-8, 0.92610375235427359475e-11, 0.45054073102222222221e-13, 0.0},
    {0.18139556223643701364e0, 0.33741744168096996041e-2, 0.30973511714709500836e-4, 0.24619326937592290996e-6, 0.16852609412267750744e-8, 0.98166442942854895573e-11, 0.47565418097777777779e-13, 0.0},
    {0.18826980194443664549e0, 0.35010775057740317997e-2, 0.32491914440014267480e-4, 0.26007572375886319028e-6, 0.17863299617388376116e-8, 0.10403065638343878679e-10, 0.50190265831111111110e-13, 0.0},
    {0.19540403413693967350e0, 0.36342240767211326315e-2, 0.34096085096200907289e-4, 0.27479061117017637474e-6, 0.18934228504790032826e-8, 0.11021679075323598664e-10, 0.52931171733333333334e-13, 0.0},
    {0.20281109560651886959e0, 0.37739673859323597060e-2, 0.35791165457592409054e-4, 0.29038742889416172404e-6, 0.20068685374849001770e-8, 0.11673891799578381999e-10, 0.55790523093333333334e-13, 0.0},
    {0.21050455062669334978e0, 0.39206818613925652425e-2, 0.37582602289680101704e-4, 0.30691836231886877385e-6, 0.21270101645763677824e-8, 0.12361138551062899455e-10, 0.58770520160000000000e-13, 0.0},
    {0.21849873453703332479e0, 0.40747643554689586041e-2, 0.39476163820986711501e-4, 0.32443839970139918836e-6, 0.22542053491518680200e-8, 0.13084879235290858490e-10, 0.61873153262222222221e-13, 0.0},
    {0.22680879990043229327e0, 0.42366354648628516935e-2, 0.41477956909656896779e-4, 0.34300544894502810002e-6, 0.23888264229264067658e-8, 0.13846596292818514601e-10, 0.65100183751111111110e-13, 0.0},
    {0.23545076536988703937e0, 0.44067409206365170888e-2, 0.43594444916224700881e-4, 0.36268045617760415178e-6, 0.25312606430853202748e-8, 0.14647791812837903061e-10, 0.68453122631111111110e-13, 0.0},
    {0.24444156740777432838e0, 0.45855530511605787178e-2, 0.45832466292683085475e-4, 0.38352752590033030472e-6, 0.26819103733055603460e-8, 0.15489984390884756993e-10, 0.71933206364444444445e-13, 0.0},
    {0.25379911500634264643e0, 0.47735723208650032167e-2, 0.48199253896534185372e-4, 0.40561404245564732314e-6, 0.28411932320871165585e-8, 0.16374705736458320149e-10, 0.75541379822222222221e-13, 0.0},
    {0.26354234756393613032e0, 0.49713289477083781266e-2, 0.50702455036930367504e-4, 0.42901079254268185722e-6, 0.30095422058900481753e-8, 0.17303497025347342498e-10, 0.79278273368888888890e-13, 0.0},
    {0.27369129607732343398e0, 0.51793846023052643767e-2, 0.53350152258326602629e-4, 0.45379208848865015485e-6, 0.31874057245814381257e-8, 0.18277905010245111046e-10, 0.83144182364444444445e-13, 0.0},
    {0.28426714781640316172e0, 0.53983341916695141966e-2, 0.56150884865255810638e-4, 0.48003589196494734238e-6, 0.33752476967570796349e-8, 0.19299477888083469086e-10, 0.87139049137777777779e-13, 0.0},
    {0.29529231465348519920e0, 0.56288077305420795663e-2, 0.59113671189913307427e-4, 0.50782393781744840482e-6, 0.35735475025851713168e-8, 0.20369760937017070382e-10, 0.91262442613333333334e-13, 0.0},
    {0.30679050522528838613e0, 0.58714723032745403331e-2, 0.62248031602197686791e-4, 0.53724185766200945789e-6, 0.37827999418960232678e-8, 0.21490291930444538307e-10, 0.95513539182222222221e-13, 0.0},
    {0.31878680111173319425e0, 0.61270341192339103514e-2, 0.65564012259707640976e-4, 0.56837930287837738996e-6, 0.40035151353392378882e-8, 0.22662596341239294792e-10, 0.99891109760000000000e-13, 0.0},
    {0.33130773722152622027e0, 0.63962406646798080903e-2, 0.69072209592942396666e-4, 0.60133006661885941812e-6, 0.42362183765883466691e-8, 0.23888182347073698382e-10, 0.10439349811555555556e-12, 0.0},
    {0.34438138658041336523e0, 0.66798829540414007258e-2, 0.72783795518603561144e-4, 0.63619220443228800680e-6, 0.44814499336514453364e-8, 0.25168535651285475274e-10, 0.10901861383111111111e-12, 0.0},
    {0.35803744972380175583e0, 0.69787978834882685031e-2, 0.76710543371454822497e-4, 0.67306815308917386747e-6, 0.47397647975845228205e-8, 0.26505114141143050509e-10, 0.11376390933333333333e-12, 0.0},
    {0.37230734890119724188e0, 0.72938706896461381003e-2, 0.80864854542670714092e-4, 0.71206484718062688779e-6, 0.50117323769745883805e-8, 0.27899342394100074165e-10, 0.11862637614222222222e-12, 0.0},
    {0.38722432730555448223e0, 0.76260375162549802745e-2, 0.85259785810004603848e-4, 0.75329383305171327677e-6, 0.52979361368388119355e-8, 0.29352606054164086709e-10, 0.12360253370666666667e-12, 0.0},
    {0.40282355354616940667e0, 0.79762880915029728079e-2, 0.89909077342438246452e-4, 0.79687137961956194579e-6, 0.55989731807360403195e-8, 0.30866246101464869050e-10, 0.12868841946666666667e-12, 0.0},
    {0.41914223158913787649e0, 0.83456685186950463538e-2, 0.94827181359250161335e-4, 0.84291858561783141014e-6, 0.59154537751083485684e-8, 0.32441553034347469291e-10, 0.13387957943111111111e-12, 0.0},
    {0.43621971639463786896e0, 0.87352841828289495773e-2, 0.10002929142066799966e-3, 0.89156148280219880024e-6, 0.62480008150788597147e-8, 0.34079760983458878910e-10, 0.13917107176888888889e-12, 0.0},
    {0.45409763548534330981e0, 0.91463027755548240654e-2, 0.10553137232446167258e-3, 0.94293113464638623798e-6, 0.65972492312219959885e-8, 0.35782041795476563662e-10, 0.14455745872000000000e-12, 0.0},
    {0.47282001668512331468e0, 0.95799574408860463394e-2, 0.11135019058000067469e-3, 0.99716373005509038080e-6, 0.69638453369956970347e-8, 0.37549499088161345850e-10, 0.15003280712888888889e-12, 0.0},
    {0.49243342227179841649e0, 0.10037550043909497071e-1, 0.11750334542845234952e-3, 0.10544006716188967172e-5, 0.73484461168242224872e-8, 0.39383162326435752965e-10, 0.15559069118222222222e-12, 0.0},
    {0.51298708979209258326e0, 0.10520454564612427224e-1, 0.12400930037494996655e-3, 0.11147886579371265246e-5, 0.77517184550568711454e-8, 0.41283980931872622611e-10, 0.16122419680000000000e-12, 0.0},
    {0.53453307979101369843e0, 0.11030120618800726938e-1, 0.13088741519572269581e-3, 0.11784797595374515432e-5, 0.81743383063044825400e-8, 0.43252818449517081051e-10, 0.16692592640000000000e-12, 0.0},
    {0.55712643071169299478e0, 0.11568077107929735233e-1, 0.13815797838036651289e-3, 0.12456314879260904558e-5, 0.86169898078969313597e-8, 0.45290446811539652525e-10, 0.17268801084444444444e-12, 0.0},
    {0.58082532122519320968e0, 0.12135935999503877077e-1, 0.14584223996665838559e-3, 0.13164068573095710742e-5, 0.90803643355106020163e-8, 0.47397540713124619155e-10, 0.17850211608888888889e-12, 0.0},
    {0.60569124025293375554e0, 0.12735396239525550361e-1, 0.15396244472258863344e-3, 0.13909744385382818253e-5, 0.95651595032306228245e-8, 0.49574672127669041550e-10, 0.18435945564444444444e-12, 0.0},
    {0.63178916494715716894e0, 0.13368247798287030927e-1, 0.16254186562762076141e-3, 0.14695084048334056083e-5, 0.10072078109604152350e-7, 0.51822304995680707483e-10, 0.19025081422222222222e-12, 0.0},
    {0.65918774689725319200e0, 0.14036375850601992063e-1, 0.17160483760259706354e-3, 0.15521885688723188371e-5, 0.10601827031535280590e-7, 0.54140790105837520499e-10, 0.19616655146666666667e-12, 0.0},
    {0.68795950683174433822e0, 0.14741765091365869084e-1, 0.18117679143520433835e-3, 0.16392004108230585213e-5, 0.11155116068018043001e-7, 0.56530360194925690374e-10, 0.20209663662222222222e-12, 0.0},
    {0.71818103808729967036e0, 0.15486504187117112279e-1, 0.19128428784550923217e-3, 0.17307350969359975848e-5, 0.11732656736113607751e-7, 0.58991125287563833603e-10, 0.20803065333333333333e-12, 0.0},
    {0.74993321911726254661e0, 0.16272790364044783382e-1, 0.20195505163377912645e-3, 0.18269894883203346953e-5, 0.12335161021630225535e-7, 0.61523068312169087227e-10, 0.21395783431111111111e-12, 0.0},
    {0.78330143531283492729e0, 0.17102934132652429240e-1, 0.21321800585063327041e-3, 0.19281661395543913713e-5, 0.12963340087354341574e-7, 0.64126040998066348872e-10, 0.21986708942222222222e-12, 0.0},
    {0.81837581041023811832e0, 0.17979364149044223802e-1, 0.22510330592753129006e-3, 0.20344732868018175389e-5, 0.13617902941839949718e-7, 0.66799760083972474642e-10, 0.22574701262222222222e-12, 0.0},
    {0.85525144775685126237e0, 0.18904632212547561026e-1, 0.23764237370371255638e-3, 0.21461248251306387979e-5, 0.14299555071870523786e-7, 0.69543803864694171934e-10, 0.23158593688888888889e-12, 0.0},
    {0.89402868170849933734e0, 0.19881418399127202569e-1, 0.25086793128395995798e-3, 0.22633402747585233180e-5, 0.15008997042116532283e-7, 0.72357609075043941261e-10, 0.23737194737777777778e-12, 0.0},
    {0.93481333942870796363e0, 0.20912536329780368893e-1, 0.26481403465998477969e-3, 0.23863447359754921676e-5, 0.15746923065472184451e-7, 0.75240468141720143653e-10, 0.24309291271111111111e-12, 0.0},
    {0.97771701335885035464e0, 0.22000938572830479551e-1, 0.27951610702682383001e-3, 0.25153688325245314530e-5, 0.16514019547822821453e-7, 0.78191526829368231251e-10, 0.24873652355555555556e-12, 0.0},
};

/* The constants of rln_verified/_gaussian.py. */
#define INV_SQRT_2PI 0.3989422804014327
#define SQRT_HALF_PI 1.2533141373155003
#define SQRT_HALF 0.7071067811865476
#define INV_LN2 1.4426950408889634
#define LN2_HI 6.93147180369123816490e-01 /* a multiple of 2^-32: k LN2_HI is exact for k < 2^21 */
#define LN2_LO 1.90821492927058770002e-10
#define X_SPLIT 4.5
#define A_CLAMP 40.0
#define CF_DEPTH 32
#define MAGIC 0x1.8p52 /* (z + MAGIC) - MAGIC rounds z to the nearest integer for |z| < 2^51 */
#define TINY32 0x1p-126

static inline v4d vfill(double c) { return (v4d){c, c, c, c}; }
static inline v4l lfill(i64 c) { return (v4l){c, c, c, c}; }
/* m ? a : b lane by lane; m is all ones or all zeros in each lane (a vector comparison). */
static inline v4d vsel(v4l m, v4d a, v4d b) { return (v4d)((m & (v4l)a) | (~m & (v4l)b)); }
static inline v4d vabs(v4d x) { return (v4d)((v4l)x & lfill(INT64_MAX)); }
static inline int vany(v4l m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }

static inline v4d vload(const float *p) {
    v4f f;
    memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, v4d);
}
static inline void vstore(float *p, v4d x) {
    v4f f = __builtin_convertvector(x, v4f); /* round to nearest, as (float) */
    memcpy(p, &f, sizeof f);
}

/* phi(y) = exp(-y^2/2)/sqrt(2 pi) for 0 <= y <= 40 (RELU-6 (X)): e = y^2/2 = k ln2 + r with k the nearest
 * integer to e/ln2 (k <= 1155), so |r| <= ln2/2 + 2^-40; exp(s), s = -r, by its Taylor polynomial of degree 13,
 * 1 + s (1 + s P(s)) with P(s) = sum_{j=0}^{11} s^j/(j+2)! in Estrin's form (its rounding is damped by s^2 <= 0.121);
 * then times 2^-k, built in the exponent field: exact while the result is normal, 0 where 2^-k < 2^-1022. */
static inline v4d vphi(v4d y) {
    const v4d e = (0.5 * y) * y;
    const v4d kd = (e * INV_LN2 + MAGIC) - MAGIC;
    const v4d s = kd * LN2_LO - (e - kd * LN2_HI); /* -r; e - kd LN2_HI is exact */
    const v4d s2 = s * s, s4 = s2 * s2, s8 = s4 * s4;
    const v4d p01 = 1.0 / 2 + s * (1.0 / 6), p23 = 1.0 / 24 + s * (1.0 / 120), p45 = 1.0 / 720 + s * (1.0 / 5040);
    const v4d p67 = 1.0 / 40320 + s * (1.0 / 362880), p89 = 1.0 / 3628800 + s * (1.0 / 39916800);
    const v4d p1011 = 1.0 / 479001600 + s * (1.0 / 6227020800.0);
    const v4d q0 = p01 + s2 * p23, q1 = p45 + s2 * p67, q2 = p89 + s2 * p1011;
    const v4d big_p = (q0 + s4 * q1) + s8 * q2;
    const v4d p = 1.0 + s * (1.0 + s * big_p);
    const v4l k = (v4l)(kd + MAGIC) - (v4l)vfill(MAGIC); /* the integer kd, exactly */
    v4l ex = lfill(1023) - k;
    ex &= (ex > 0); /* 0 <= ex <= 1023 for y <= 40: 2^(ex - 1023), or 0 */
    return (p * INV_SQRT_2PI) * (v4d)((v4u)ex << 52);
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUF(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)
#else
#define SHUF(a, b, i0, i1, i2, i3) __builtin_shuffle(a, b, (v4l){i0, i1, i2, i3})
#endif

/* erfcx(x) for 0 <= x <= 50 (x not NaN): erfcx_y100(400/(4 + x)) of the Faddeeva package, the same operations in
 * the same order (its Horner form); 1 at y100 = 100 (x < 4 eps), as there. In two steps: verfcx_index gives the row
 * k of each lane and its argument t; verfcx_eval loads the four rows whole and transposes them (a gather without
 * gather instructions), then evaluates. */
static inline void verfcx_index(v4d x, v4d *t, int32_t *k_out) {
    const v4d y100 = 400.0 / (4.0 + x);
    v4i k = __builtin_convertvector(y100, v4i); /* truncation, y100 >= 0 */
    k = (k & ~(k > 99)) | ((v4i){99, 99, 99, 99} & (k > 99));
    /* y100 = 100 (x < 4 eps) evaluates row 99 at t = 1 (a value within 1e-15 of 1); t = 3 flags it for 1. */
    *t = vsel(y100 >= 100.0, vfill(3.0), 2.0 * y100 - __builtin_convertvector(2 * k + 1, v4d));
    memcpy(k_out, &k, sizeof k);
}

static inline v4d verfcx_eval(v4d t, const int32_t *k) {
    v4d a0, a1, a2, a3, b0, b1, b2, b3;
    memcpy(&a0, ERFCX_C[k[0]], 32);
    memcpy(&b0, ERFCX_C[k[0]] + 4, 32);
    memcpy(&a1, ERFCX_C[k[1]], 32);
    memcpy(&b1, ERFCX_C[k[1]] + 4, 32);
    memcpy(&a2, ERFCX_C[k[2]], 32);
    memcpy(&b2, ERFCX_C[k[2]] + 4, 32);
    memcpy(&a3, ERFCX_C[k[3]], 32);
    memcpy(&b3, ERFCX_C[k[3]] + 4, 32);
    const v4d t0 = SHUF(a0, a1, 0, 4, 2, 6), t1 = SHUF(a0, a1, 1, 5, 3, 7);
    const v4d t2 = SHUF(a2, a3, 0, 4, 2, 6), t3 = SHUF(a2, a3, 1, 5, 3, 7);
    const v4d u0 = SHUF(b0, b1, 0, 4, 2, 6), u1 = SHUF(b0, b1, 1, 5, 3, 7);
    const v4d u2 = SHUF(b2, b3, 0, 4, 2, 6), u3 = SHUF(b2, b3, 1, 5, 3, 7);
    const v4d c0 = SHUF(t0, t2, 0, 1, 4, 5), c1 = SHUF(t1, t3, 0, 1, 4, 5), c2 = SHUF(t0, t2, 2, 3, 6, 7);
    const v4d c3 = SHUF(t1, t3, 2, 3, 6, 7), c4 = SHUF(u0, u2, 0, 1, 4, 5), c5 = SHUF(u1, u3, 0, 1, 4, 5);
    const v4d c6 = SHUF(u0, u2, 2, 3, 6, 7);
    const v4d v = c0 + (c1 + (c2 + (c3 + (c4 + (c5 + c6 * t) * t) * t) * t) * t) * t;
    return vsel(t > 2.0, vfill(1.0), v);
}

/* a = mu/sigma with the sigma = 0 limit: +inf, -inf, or 0 (0 * mu) when mu = 0 (RELU-3). */
static inline v4d vratio(v4d mu, v4d sigma) {
    const v4d lim = vsel(mu > 0.0, vfill(INFINITY), vsel(mu < 0.0, vfill(-INFINITY), 0.0 * mu));
    return vsel(sigma == 0.0, lim, mu / sigma);
}

/* Tail branch, x = -a > X_SPLIT (RELU-4 T, F, E): the same operations as _relu_moments_f64's tail. */
static __attribute__((noinline)) void tail(double sigma, double a, double *mean, double *var, double *pdf,
                                           double *q) {
    const double x = -a;
    const double n_top = CF_DEPTH + 1;
    double r = (sqrt(x * x + 4.0 * n_top) - x) / (2.0 * n_top);
    if (x == INFINITY) r = 0.0;
    double r1 = r, r2 = r;
    for (int n = CF_DEPTH; n >= 1; --n) {
        r = 1.0 / (x + (double)n * r);
        if (n == 3) r2 = r;
        else if (n == 2) r1 = r;
    }
    const double r0 = r;
    const double ye = x < 100.0 ? x : 100.0;
    const double ee = 0.5 * ye * ye;
    const double nexp = floor(ee * INV_LN2);
    const double f = (ee - nexp * LN2_HI) - nexp * LN2_LO;
    const double base = exp(-f) * INV_SQRT_2PI;
    const int ne = (int)nexp;
    const double core = base * r0 * r1;
    *mean = ldexp(sigma * core, -ne);
    const double h1 = ldexp(core, -ne);
    const int n1 = ne / 2;
    *var = ldexp(sigma * (core * (2.0 * r2 - h1)), -n1) * ldexp(sigma, n1 - ne);
    /* For the backward: phi(x) and Q(x) = phi(x) r_0, 0 beyond A_CLAMP as in the direct lanes (RELU-6). */
    *pdf = x > A_CLAMP ? 0.0 : ldexp(base, -ne);
    *q = *pdf * r0;
}

/* The std of four lanes. With no variance (vp NULL), sp holds sigma. With a variance v (vp), sp holds the float32
 * sqrt(v) the caller computed with torch, and sigma is that value where v >= 2^-126 and sqrt(2^-126) = 2^-63 (exact)
 * below: bit for bit the sqrt(clamp_min(v, 2^-126)) of the CLT layers' safe_sqrt, NaN included. */
static inline v4d vstd(const float *sp, const float *vp) {
    const v4d s = vload(sp);
    if (!vp) return s;
    return vsel(vload(vp) < TINY32, vfill(0x1p-63), s);
}

#define BLK 128

/* Forward of m <= BLK lanes (m a multiple of 4), in stages over the block so that each loop is short and its
 * iterations independent: std and ratio, phi, the Mills ratio, then the moments. aux receives, for the backward,
 * the float64 mean, phi(|a|) and Q(|a|) with |a| taken at most A_CLAMP (RELU-6), each in a plane of stride n. */
static void fwd_range(const float *mup, const float *sp, const float *vp, i64 m, float *mo, float *vo, double *aux,
                      i64 n) {
    double sb[BLK], ab[BLK], yb[BLK], pb[BLK], rb[BLK];
    for (i64 i = 0; i < m; i += 4) {
        const v4d sg = vstd(sp + i, vp ? vp + i : NULL);
        const v4d a = vratio(vload(mup + i), sg);
        const v4l tl = a < -X_SPLIT;
        /* Direct branch, a in [-X_SPLIT, A_CLAMP]; tail lanes see a = 0 (masked input). RELU-1 (3), RELU-4 D. */
        const v4d y = vabs(vsel(tl, vfill(0.0), vsel(a > A_CLAMP, vfill(A_CLAMP), a)));
        memcpy(sb + i, &sg, sizeof sg);
        memcpy(ab + i, &a, sizeof a);
        memcpy(yb + i, &y, sizeof y);
    }
    for (i64 i = 0; i < m; i += 4) {
        v4d y;
        memcpy(&y, yb + i, sizeof y);
        const v4d p = vphi(y);
        memcpy(pb + i, &p, sizeof p);
    }
    int32_t kb[BLK];
    for (i64 i = 0; i < m; i += 4) { /* R(y) = sqrt(pi/2) erfcx(y/sqrt 2); 0 <= y <= A_CLAMP, NaN lanes at 0 */
        v4d y, t;
        memcpy(&y, yb + i, sizeof y);
        verfcx_index(vsel(y == y, y, vfill(0.0)) * SQRT_HALF, &t, kb + i);
        memcpy(rb + i, &t, sizeof t);
    }
    for (i64 i = 0; i < m; i += 4) {
        v4d t;
        memcpy(&t, rb + i, sizeof t);
        const v4d r = SQRT_HALF_PI * verfcx_eval(t, kb + i);
        memcpy(rb + i, &r, sizeof r);
    }
    for (i64 i = 0; i < m; i += 4) {
        v4d sg, a, y, pdf, mills;
        memcpy(&sg, sb + i, sizeof sg);
        memcpy(&a, ab + i, sizeof a);
        memcpy(&y, yb + i, sizeof y);
        memcpy(&pdf, pb + i, sizeof pdf);
        memcpy(&mills, rb + i, sizeof mills);
        const v4d mu = vload(mup + i);
        const v4l tl = a < -X_SPLIT;
        v4d q = pdf * mills;
        const v4d cdf = 1.0 - q;
        const v4d mean_p = mu * cdf + sg * pdf;
        const v4d v_pos = cdf + y * y * cdf * q - y * pdf * (cdf - q) - pdf * pdf;
        const v4d h1 = pdf * (1.0 - y * mills);
        const v4d mean_n = sg * h1;
        const v4d v_neg = pdf * ((1.0 + y * y) * mills - y) - h1 * h1;
        const v4l pos = (a >= 0.0) & ~tl;
        v4d mean = vsel(pos, mean_p, mean_n);
        v4d var = sg * (sg * vsel(pos, v_pos, v_neg));
        const v4l bad = (mu != mu) | (sg != sg) | (sg < 0.0);
        mean = vsel(bad, vfill(NAN), mean);
        var = vsel(bad, vfill(NAN), var);
        const v4l t_ok = tl & ~bad;
        if (vany(t_ok)) {
            for (int j = 0; j < 4; ++j) {
                if (t_ok[j]) {
                    double mt, vt, pt, qt;
                    tail(sg[j], a[j], &mt, &vt, &pt, &qt);
                    mean[j] = mt;
                    var[j] = vt;
                    pdf[j] = pt;
                    q[j] = qt;
                }
            }
        }
        memcpy(aux + i, &mean, sizeof mean);
        memcpy(aux + n + i, &pdf, sizeof pdf);
        memcpy(aux + 2 * n + i, &q, sizeof q);
        vstore(mo + i, mean);
        vstore(vo + i, var);
    }
}

/* RELU-5 partials from the forward's float64 mean, phi(|a|) and Q(|a|); with a variance (vp), dL/dv =
 * dL/dsigma / (2 sigma) where v >= 2^-126 and 0 below or at a NaN (clamp_min's mask). */
static inline __attribute__((always_inline)) void bwd_block(const float *gmp, const float *gvp, const float *mup,
                                                            const float *sp, const float *vp, const double *aux, i64 n,
                                                            float *gmu_o, float *gs_o) {
    const v4d mu = vload(mup);
    const v4d sg = vstd(sp, vp);
    v4d mean, pdf, q;
    memcpy(&mean, aux, sizeof mean);
    memcpy(&pdf, aux + n, sizeof pdf);
    memcpy(&q, aux + 2 * n, sizeof q);
    const v4l pos = vratio(mu, sg) >= 0.0;
    const v4d big = 1.0 - q;
    const v4d cdf = vsel(pos, big, q);
    const v4d mean_q = mean * vsel(pos, q, big);
    const v4d sig_cdf = sg * cdf;
    const v4d mean_pdf = mean * pdf;
    const v4d gm = vload(gmp), gv = vload(gvp);
    const v4d g_mu = gm * cdf + gv * (2.0 * mean_q);
    v4d g_s = gm * pdf + gv * (2.0 * (sig_cdf - mean_pdf));
    if (vp) g_s = vsel(vload(vp) >= TINY32, g_s / (2.0 * sg), vfill(0.0));
    vstore(gmu_o, g_mu);
    vstore(gs_o, g_s);
}

int rln_gauss_abi_version(void) { return GAUSS_ABI; }

/* mean and var (float32) of relu(N(mu, sigma^2)) for n elements, and aux (3 n float64) for the backward. v: NULL,
 * or the variance whose torch sqrt s is (see vstd). */
int rln_relu_moments_fwd_f32(const float *mu, const float *s, const float *v, i64 n, float *mean, float *var,
                             double *aux) {
    if (n < 0) return 1;
    const i64 n4 = n - n % 4;
    for (i64 i = 0; i < n4; i += BLK) {
        const i64 m = n4 - i < BLK ? n4 - i : BLK;
        fwd_range(mu + i, s + i, v ? v + i : NULL, m, mean + i, var + i, aux + i, n);
    }
    if (n4 < n) {
        float tm[4] = {0, 0, 0, 0}, ts[4] = {1, 1, 1, 1}, tv[4] = {1, 1, 1, 1}, om[4], ov[4];
        double ta[12];
        for (i64 j = n4; j < n; ++j) {
            tm[j - n4] = mu[j];
            ts[j - n4] = s[j];
            if (v) tv[j - n4] = v[j];
        }
        fwd_range(tm, ts, v ? tv : NULL, 4, om, ov, ta, 4);
        for (i64 j = n4; j < n; ++j) {
            mean[j] = om[j - n4];
            var[j] = ov[j - n4];
            for (int p = 0; p < 3; ++p) aux[p * n + j] = ta[p * 4 + (j - n4)];
        }
    }
    return 0;
}

/* dL/dmu and dL/dsigma (dL/dv with a variance v) from dL/dmean, dL/dvar and the forward's aux. */
int rln_relu_moments_bwd_f32(const float *g_mean, const float *g_var, const float *mu, const float *s, const float *v,
                             const double *aux, i64 n, float *g_mu, float *g_s) {
    if (n < 0) return 1;
    i64 i = 0;
    for (; i + 4 <= n; i += 4)
        bwd_block(g_mean + i, g_var + i, mu + i, s + i, v ? v + i : NULL, aux + i, n, g_mu + i, g_s + i);
    if (i < n) {
        float tgm[4] = {0, 0, 0, 0}, tgv[4] = {0, 0, 0, 0}, tm[4] = {0, 0, 0, 0}, ts[4] = {1, 1, 1, 1};
        float tv[4] = {1, 1, 1, 1}, o1[4], o2[4];
        double ta[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (i64 j = i; j < n; ++j) {
            tgm[j - i] = g_mean[j];
            tgv[j - i] = g_var[j];
            tm[j - i] = mu[j];
            ts[j - i] = s[j];
            if (v) tv[j - i] = v[j];
            for (int p = 0; p < 3; ++p) ta[p * 4 + (j - i)] = aux[p * n + j];
        }
        bwd_block(tgm, tgv, tm, ts, v ? tv : NULL, ta, 4, o1, o2);
        for (i64 j = i; j < n; ++j) {
            g_mu[j] = o1[j - i];
            g_s[j] = o2[j - i];
        }
    }
    return 0;
}

/* ---- the posterior std: sigma = exp(clamp(rho, lo, hi)) in float32 (EXP-1) -------------------------------------- */

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

static inline v8f ffill(float c) { return (v8f){c, c, c, c, c, c, c, c}; }

/* exp(x) for float32 x with e^x a normal float (EXP-1 uses x in [-21.84, 11.10]), NaN to NaN: x = k ln2 + r, k the
 * nearest integer to x/ln2, r = (x - k C1) - k C2 with C1 = 0.693359375 (exact products for |k| < 2^15) and C1 + C2
 * = ln 2 to float32 precision; exp(r) = 1 + r + r^2 P(r), P of degree 5 (Cephes' expf coefficients); times 2^k in
 * the exponent field. Every operation is a separately rounded float32 operation (-ffp-contract=off). */
static inline __attribute__((always_inline)) v8f vexpf(v8f x_in) {
    const v8i ok = x_in == x_in;
    const v8f x = (v8f)(ok & (v8i)x_in); /* a NaN lane runs at 0 and is restored at the end */
    const v8f kf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: |x/ln2| < 2^22 */
    const v8f r = (x - kf * 0.693359375f) - kf * -2.12194440e-4f;
    v8f p = ffill(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const v8i k = __builtin_convertvector(kf, v8i);
    const v8f e = p * (v8f)((v8u)(k + 127) << 23);
    return (v8f)((ok & (v8i)e) | (~ok & (v8i)x_in));
}

/* Eight lanes of exp(clamp(rho, lo, hi)), squared when asked; returns the lanes' saturation mask (below lo, above hi
 * or NaN: clamp's zero-gradient set). */
static inline __attribute__((always_inline)) v8i exp_clamp8(const float *rp, float lo, float hi, int square, float *op) {
    v8f rho;
    memcpy(&rho, rp, sizeof rho);
    const v8i below = rho < lo, above = rho > hi;
    v8f x = (v8f)((below & (v8i)ffill(lo)) | (~below & (v8i)rho));
    x = (v8f)((above & (v8i)ffill(hi)) | (~above & (v8i)x)); /* NaN stays NaN, as torch.clamp */
    v8f s = vexpf(x);
    if (square) s = s * s;
    memcpy(op, &s, sizeof s);
    return below | above | (rho != rho);
}

/* out = exp(clamp(rho, lo, hi)) (squared when square) for n float32 elements, and, when w is given, w2 = w * w.
 * Returns 1 when some element was saturated or NaN (the caller then builds clamp's gradient mask), else 0. */
int rln_exp_clamp_f32(const float *rho, i64 n, float lo, float hi, int square, float *out, const float *w,
                      float *w2) {
    v8i sat = {0, 0, 0, 0, 0, 0, 0, 0};
    i64 i = 0;
    for (; i + 32 <= n; i += 32) { /* four independent vectors per step: the polynomial's latency overlaps */
        sat |= exp_clamp8(rho + i, lo, hi, square, out + i) | exp_clamp8(rho + i + 8, lo, hi, square, out + i + 8)
               | exp_clamp8(rho + i + 16, lo, hi, square, out + i + 16)
               | exp_clamp8(rho + i + 24, lo, hi, square, out + i + 24);
        if (w) {
            for (int j = 0; j < 32; j += 8) {
                v8f a;
                memcpy(&a, w + i + j, sizeof a);
                a = a * a;
                memcpy(w2 + i + j, &a, sizeof a);
            }
        }
    }
    for (; i + 8 <= n; i += 8) {
        sat |= exp_clamp8(rho + i, lo, hi, square, out + i);
        if (w) {
            v8f a;
            memcpy(&a, w + i, sizeof a);
            a = a * a;
            memcpy(w2 + i, &a, sizeof a);
        }
    }
    if (i < n) {
        float tr[8] = {0, 0, 0, 0, 0, 0, 0, 0}, to[8];
        for (i64 j = i; j < n; ++j) tr[j - i] = rho[j];
        const v8i s8 = exp_clamp8(tr, lo, hi, square, to);
        for (i64 j = i; j < n; ++j) {
            out[j] = to[j - i];
            sat[0] |= s8[j - i];
            if (w) w2[j] = w[j] * w[j];
        }
    }
    int any = 0;
    for (int j = 0; j < 8; ++j) any |= sat[j] != 0;
    return any;
}

/* EXP-1's check: the largest |vexpf(x) - e^x| / ulp(e^x) over every stride-th float32 x from lo up to hi (stride 1:
 * every one; hi itself is always included), with e^x from the float64 exp of the C library (within 1 ulp of float64,
 * 2^-29 of a float32 ulp). ulp(e^x) is the spacing of float32 at e^x. */
static i64 f32_order(float f) { /* floats to consecutive integers, in order (-0 and +0 both 0) */
    int32_t b;
    memcpy(&b, &f, sizeof b);
    return b >= 0 ? (i64)b : -(i64)(b & 0x7fffffff);
}

static float f32_unorder(i64 o) {
    const int32_t b = o >= 0 ? (int32_t)o : (int32_t)((uint32_t)(-o) | 0x80000000u);
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

double rln_exp_f32_max_ulp(float lo, float hi, i64 stride, float *where) {
    double worst = 0.0;
    float xs[8], es[8];
    int cnt = 0;
    if (stride < 1) stride = 1;
    *where = lo;
    const i64 o_hi = f32_order(hi);
    for (i64 o = f32_order(lo);; o += stride) {
        const int last = o >= o_hi;
        xs[cnt++] = last ? hi : f32_unorder(o);
        if (cnt == 8 || last) {
            for (int j = cnt; j < 8; ++j) xs[j] = xs[0];
            v8f v;
            memcpy(&v, xs, sizeof v);
            v = vexpf(v);
            memcpy(es, &v, sizeof v);
            for (int j = 0; j < cnt; ++j) {
                const double ref = exp((double)xs[j]);
                int e2;
                frexp(ref, &e2); /* ref in [2^(e2-1), 2^e2): float32 spacing 2^(e2-24) */
                const double err = fabs((double)es[j] - ref) / ldexp(1.0, e2 - 24);
                if (err > worst) {
                    worst = err;
                    *where = xs[j];
                }
            }
            cnt = 0;
        }
        if (last) break;
    }
    return worst;
}

/* ---- Gaussian KL in float64, rounded once to float32 (KL-2) ------------------------------------------------------ */

/* P(z) = sum_{k=0}^{9} z^k / (2k + 3), so that 2 atanh(s) = 2 s + 2 s^3 P(s^2) up to the truncation s^22/23... */
static inline v4d katanh_p(v4d z) {
    v4d p = vfill(1.0 / 21);
    p = p * z + 1.0 / 19;
    p = p * z + 1.0 / 17;
    p = p * z + 1.0 / 15;
    p = p * z + 1.0 / 13;
    p = p * z + 1.0 / 11;
    p = p * z + 1.0 / 9;
    p = p * z + 1.0 / 7;
    p = p * z + 1.0 / 5;
    p = p * z + 1.0 / 3;
    return p;
}

#define SQRT2 1.4142135623730951

/* The reduction of KL-2's log L (positive normal float64 x): x = m 2^e, m in [sqrt(1/2), sqrt 2), returns
 * f = m - 1 (exact) and sets *ed = e; then log(x) = e ln2_hi + (e ln2_lo + 2 atanh(s)), s = f/(2 + f), |s| <= 0.1716. */
static inline v4d klog_reduce(v4d x, v4d *ed) {
    const v4l bits = (v4l)x;
    v4l e = ((bits >> 52) & lfill(0x7ff)) - lfill(1023);
    v4d m = (v4d)((bits & lfill(0x000fffffffffffffLL)) | lfill(0x3ff0000000000000LL));
    const v4l big = m > SQRT2;
    m = vsel(big, 0.5 * m, m);
    e = e - big; /* big lanes are -1: e + 1 */
    *ed = __builtin_convertvector(e, v4d);
    return m - 1.0;
}

/* 4 lanes of KL(N(mq, sq^2) || N(mp, sp^2)) = (d^2 + g)/2, d = (mq - mp)/sp, g = t - log1p(t), t = r^2 - 1,
 * r = sq/sp, in float64; a pointer with inc 0 is one value for every lane. Both branches use one atanh series: its
 * argument is s = t/(2 + t) where |t| < 1/8 and s = f/(2 + f) of log r's reduction elsewhere (one division and one
 * series per lane, where computing both branches took two and two). */
static inline v4d kl4(v4d mq, v4d sq, v4d mp, v4d sp) {
    const v4d d = (mq - mp) / sp;
    const v4d t = ((sq - sp) * (sq + sp)) / (sp * sp);
    const v4l near = (t < 0.125) & (t > -0.125);
    const v4d r = sq / sp;
    const v4l r_ok = (r > 0.0) & (r < INFINITY);
    v4d ed;
    const v4d f = klog_reduce(vsel(r_ok & ~near, r, vfill(1.0)), &ed);
    const v4d x = vsel(near, t, f);
    const v4d s = x / (2.0 + x), s2 = s * s;
    const v4d tail = (2.0 * s) * (s2 * katanh_p(s2)); /* 2 s^3 P(s^2) */
    /* |t| < 1/8: g = t^2/(2+t) - 2 s^3 P(s^2), t^2/(2+t) = t s, |s| <= 1/15 (no cancellation beyond 2.5%) */
    const v4d g_near = t * s - tail;
    /* |t| >= 1/8: g = t - 2 log r, g >= 0.0072 */
    const v4d g_far = t - 2.0 * (ed * LN2_HI + (ed * LN2_LO + (2.0 * s + tail)));
    v4d g = vsel(near, g_near, g_far);
    g = vsel(g < 0.0, vfill(0.0), g);                       /* rounding guard; g >= 0 exactly (KL-2); NaN stays */
    /* r = 0 or inf: KL = inf. From float32 inputs r = 0 exactly when sq = 0 or sp = inf (where t is inf/inf) and
     * r = inf when sq = inf; sq = sp = inf gives r = NaN, and g stays NaN (no limit) */
    g = vsel((r == 0.0) | (r == INFINITY), vfill(INFINITY), g);
    const v4d kl = 0.5 * (d * d + g);
    const v4l bad = ~(sq >= 0.0) | ~(sp > 0.0);            /* NaN included */
    return vsel(bad, vfill(NAN), kl);
}

static inline v4d kload(const float *p, i64 inc, i64 i) { return inc ? vload(p + i) : vfill((double)*p); }

/* out[i] = KL(mq, sq, mp, sp)[i] for n elements; inc 1: a plane of n floats, inc 0: one float for all. */
int rln_kl_normal_fwd_f32(const float *mq, const float *sq, const float *mp, const float *sp, i64 n, i64 i_mq,
                          i64 i_sq, i64 i_mp, i64 i_sp, float *out) {
    if (n < 0) return 1;
    i64 i = 0;
    for (; i + 4 <= n; i += 4)
        vstore(out + i, kl4(kload(mq, i_mq, i), kload(sq, i_sq, i), kload(mp, i_mp, i), kload(sp, i_sp, i)));
    if (i < n) {
        float a[4] = {0, 0, 0, 0}, b[4] = {1, 1, 1, 1}, c[4] = {0, 0, 0, 0}, e[4] = {1, 1, 1, 1}, o[4];
        for (i64 j = i; j < n; ++j) {
            a[j - i] = mq[i_mq * j];
            b[j - i] = sq[i_sq * j];
            c[j - i] = mp[i_mp * j];
            e[j - i] = sp[i_sp * j];
        }
        vstore(o, kl4(vload(a), vload(b), vload(c), vload(e)));
        for (i64 j = i; j < n; ++j) out[j] = o[j - i];
    }
    return 0;
}

/* The partials of KL-2 (B), each formed in float64 and rounded once, times the upstream gradient go:
 * dmq = (mq - mp)/sp^2, dsq = (sq - sp)(sq + sp)/(sp^2 sq), dmp = -dmq, dsp = ((sp - sq)(sp + sq) - (mq - mp)^2)/sp^3.
 * An output pointer may be NULL (not wanted). */
static inline void kl_bwd4(v4d go, v4d mq, v4d sq, v4d mp, v4d sp, v4d *g_mq, v4d *g_sq, v4d *g_sp) {
    const v4d dm = mq - mp, sp2 = sp * sp;
    const v4l bad = ~(sq >= 0.0) | ~(sp > 0.0);
    *g_mq = vsel(bad, vfill(NAN), go * (dm / sp2));
    *g_sq = vsel(bad, vfill(NAN), go * (((sq - sp) * (sq + sp)) / (sp2 * sq)));
    *g_sp = vsel(bad, vfill(NAN), go * ((((sp - sq) * (sp + sq)) - dm * dm) / (sp2 * sp)));
}

static inline void kstore(float *p, i64 i, v4d x) {
    if (p) vstore(p + i, x);
}

int rln_kl_normal_bwd_f32(const float *go, const float *mq, const float *sq, const float *mp, const float *sp, i64 n,
                          i64 i_go, i64 i_mq, i64 i_sq, i64 i_mp, i64 i_sp, float *g_mq, float *g_sq, float *g_mp,
                          float *g_sp) {
    if (n < 0) return 1;
    i64 i = 0;
    v4d a, b, c;
    for (; i + 4 <= n; i += 4) {
        kl_bwd4(kload(go, i_go, i), kload(mq, i_mq, i), kload(sq, i_sq, i), kload(mp, i_mp, i), kload(sp, i_sp, i),
                &a, &b, &c);
        kstore(g_mq, i, a);
        kstore(g_sq, i, b);
        kstore(g_mp, i, -a);
        kstore(g_sp, i, c);
    }
    if (i < n) {
        float t0[4] = {0, 0, 0, 0}, t1[4] = {0, 0, 0, 0}, t2[4] = {1, 1, 1, 1}, t3[4] = {0, 0, 0, 0};
        float t4[4] = {1, 1, 1, 1}, o[3][4];
        for (i64 j = i; j < n; ++j) {
            t0[j - i] = go[i_go * j];
            t1[j - i] = mq[i_mq * j];
            t2[j - i] = sq[i_sq * j];
            t3[j - i] = mp[i_mp * j];
            t4[j - i] = sp[i_sp * j];
        }
        kl_bwd4(vload(t0), vload(t1), vload(t2), vload(t3), vload(t4), &a, &b, &c);
        vstore(o[0], a);
        vstore(o[1], b);
        vstore(o[2], c);
        for (i64 j = i; j < n; ++j) {
            if (g_mq) g_mq[j] = o[0][j - i];
            if (g_sq) g_sq[j] = o[1][j - i];
            if (g_mp) g_mp[j] = -o[0][j - i];
            if (g_sp) g_sp[j] = o[2][j - i];
        }
    }
    return 0;
}
